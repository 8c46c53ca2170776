"""Logits of a checkpoint under the published modeling code, for ``test_model_parity.py``.

Runs in a separate interpreter whose transformers suits the published code (4.57)::

    python reference_logits.py {llada|dream} MODELING_PY CHECKPOINT INPUTS OUTPUT

``MODELING_PY`` is a local copy of ``modeling_llada.py`` or ``modeling_dream.py`` next to its
``configuration_*.py`` (and Dream's ``generation_utils.py``). ``INPUTS`` is a safetensors file
with ``input_ids`` and ``attention_mask``; ``OUTPUT`` receives ``logits`` in the convention
of the published generation code (Dream's shifted by one position). Nothing here imports mosa.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def import_published(modeling_py: Path) -> types.ModuleType:
    """Imports the file as a module of a package, so its relative imports resolve."""
    package = types.ModuleType("published")
    package.__path__ = [str(modeling_py.parent)]
    sys.modules["published"] = package
    sys.path.insert(0, str(modeling_py.parent))  # copies that import their config absolutely
    return importlib.import_module(f"published.{modeling_py.stem}")


def checkpoint_state(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if not index.exists():
        return load_file(folder / "model.safetensors")
    state = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        state.update(load_file(folder / shard))
    return state


@contextmanager
def default_dtype(state: dict[str, torch.Tensor]):
    """Builds the reference in the checkpoint's dtype the way ``from_pretrained(torch_dtype=)``
    does: parameters in that dtype, buffers the code makes in fp32 (RoPE) left in fp32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(next(iter(state.values())).dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def llada_logits(
    module, config: dict, state, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    if not bool(mask.all()):
        raise SystemExit("the published LLaDA code does not mask padding; pass unpadded inputs")
    hf_config = module.LLaDAConfig(**config)
    inner = module.create_model_config_from_pretrained_config(hf_config)
    # LLaDAModelLM.__init__ would build on "cuda"; build the inner model on the CPU and pass it in.
    inner.init_device = "cpu"
    with default_dtype(state):
        model = module.LLaDAModelLM(hf_config, model=module.LLaDAModel(inner, init_params=False))
    model.load_state_dict(state, strict=True)
    return model.eval()(ids).logits


def dream_logits(
    module, config: dict, state, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    hf_config = module.DreamConfig(**config)
    hf_config._attn_implementation = "sdpa"  # what from_pretrained picks
    with default_dtype(state):
        model = module.DreamModel(hf_config)
    model.load_state_dict(state, strict=True)
    model.eval()
    # As Dream's generation code prepares a padded batch (generation_utils._sample).
    if bool(mask.all()):
        attention_mask, tok_idx = "full", None
    else:
        tok_idx = mask.long().cumsum(-1) - 1
        tok_idx.masked_fill_(mask == 0, 1)
        attention_mask = torch.logical_and(
            mask.bool()[:, None, None, :], mask.bool()[:, None, :, None]
        )
    logits = model(ids, attention_mask, tok_idx).logits
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def main(family: str, modeling_py: str, checkpoint: str, inputs: str, output: str) -> None:
    module = import_published(Path(modeling_py).resolve())
    folder = Path(checkpoint)
    config = json.loads((folder / "config.json").read_text())
    tensors = load_file(inputs)
    run = {"llada": llada_logits, "dream": dream_logits}[family]
    with torch.no_grad():
        logits = run(
            module,
            config,
            checkpoint_state(folder),
            tensors["input_ids"],
            tensors["attention_mask"],
        )
    save_file({"logits": logits.float().contiguous()}, output)


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Logits of a checkpoint under the published modeling code, for ``test_model_parity.py``.

Runs in a separate interpreter whose transformers suits the published code (4.57)::

    python reference_logits.py {llada|dream|llada2|llada_moe} MODELING_PY CHECKPOINT INPUTS OUTPUT [BLOCK_LENGTHS]

``MODELING_PY`` is a local copy of ``modeling_llada.py``, ``modeling_dream.py``,
``modeling_llada2_moe.py`` (or LLaDA2.1's) or ``modeling_lladamoe.py`` next to its
``configuration_*.py`` (and Dream's ``generation_utils.py``). ``INPUTS`` is a safetensors file
with ``input_ids`` and ``attention_mask``; ``OUTPUT`` receives ``logits`` in the convention
of the published generation code (Dream's shifted by one position). For LLaDA2,
``BLOCK_LENGTHS`` (comma separated) also writes ``logits_block{n}``: the logits under the
block-diffusion mask its ``generate`` builds. Nothing here imports mosa.
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


def llada2_model(module, config: dict, state):
    hf_config = module.LLaDA2MoeConfig(**config)
    hf_config._attn_implementation = "sdpa"  # what from_pretrained picks
    with default_dtype(state):
        model = module.LLaDA2MoeModelLM(hf_config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def llada2_logits(
    model, ids: torch.Tensor, mask: torch.Tensor, block_length: int | None
) -> torch.Tensor:
    """The published forward as its ``generate`` calls it: a 4D block-diffusion mask (blocks
    of ``block_length`` from position 0, tril over blocks, ``.log()`` of it in the model's
    dtype: ``generate`` casts to bf16, which an fp32 model's attention refuses) and position
    ids. Under padding the mask also drops the padded keys (a bool mask, which the forward
    turns into an additive one) and the positions are ``cumsum(mask) - 1`` (padding 1), as
    ``prepare_inputs_for_generation`` makes them. ``block_length=None``: no block mask (the
    bidirectional forward)."""
    length = ids.shape[1]
    dtype = model.model.word_embeddings.weight.dtype
    if block_length is None:
        allowed = torch.ones(length, length, dtype=torch.bool)
    else:
        blocks = -(-length // block_length)
        tril = torch.tril(torch.ones(blocks, blocks))
        tril = tril.repeat_interleave(block_length, 0).repeat_interleave(block_length, 1)
        allowed = tril[:length, :length].bool()
    if bool(mask.all()):
        positions = torch.arange(length)[None]
        if block_length is None:
            return model(ids).logits
        additive = allowed.float().log().to(dtype)[None, None]
        return model(ids, attention_mask=additive, position_ids=positions).logits
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    combined = allowed[None, None] & mask.bool()[:, None, None, :]
    return model(ids, attention_mask=combined, position_ids=positions).logits


def llada_moe_logits(
    module, config: dict, state, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The published forward with the padding mask (its attention masks padded keys) or, for
    an unpadded batch, none; positions are the physical index there."""
    hf_config = module.LLaDAMoEConfig(**config)
    hf_config._attn_implementation = "sdpa"
    with default_dtype(state):
        model = module.LLaDAMoEModelLM(hf_config)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model(ids, attention_mask=None if bool(mask.all()) else mask).logits


def main(
    family: str, modeling_py: str, checkpoint: str, inputs: str, output: str, blocks: str = ""
) -> None:
    module = import_published(Path(modeling_py).resolve())
    folder = Path(checkpoint)
    config = json.loads((folder / "config.json").read_text())
    tensors = load_file(inputs)
    ids, mask, state = tensors["input_ids"], tensors["attention_mask"], checkpoint_state(folder)
    outputs = {}
    with torch.no_grad():
        if family == "llada2":
            model = llada2_model(module, config, state)
            outputs["logits"] = llada2_logits(model, ids, mask, None)
            for block_length in map(int, filter(None, blocks.split(","))):
                outputs[f"logits_block{block_length}"] = llada2_logits(
                    model, ids, mask, block_length
                )
        else:
            run = {"llada": llada_logits, "dream": dream_logits, "llada_moe": llada_moe_logits}
            outputs["logits"] = run[family](module, config, state, ids, mask)
    save_file({k: v.float().contiguous() for k, v in outputs.items()}, output)


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Tokens of the published LLaDA2.x ``generate`` on a checkpoint, for ``test_block_generate.py``.

Runs in a separate interpreter whose transformers suits the published code (4.57)::

    python reference_block_generate.py MODELING_PY CHECKPOINT CASES OUTPUT

``MODELING_PY`` is a local copy of ``modeling_llada2_moe.py`` (LLaDA2.0) or
``modeling_llada21_moe.py`` (LLaDA2.1) next to its ``configuration_*.py``. ``CASES`` is a JSON
list of ``{"prompt": [ids], "options": {generate's keyword arguments}}``; ``OUTPUT`` receives
the JSON list of the token lists ``generate`` returns (the response, cut after its first EOS).
Nothing here imports mosa.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from reference_logits import checkpoint_state, default_dtype, import_published  # noqa: E402


def published_model(module, folder: Path):
    """``LLaDA2MoeModelLM`` built in the checkpoint's dtype with its weights, in eval mode.

    The published ``generate`` makes its additive block mask (0 / -inf) in bf16, the
    released checkpoints' dtype, and SDPA refuses a bf16 mask next to fp32 queries: a hook
    casts the mask to the model's dtype, which keeps its values.
    """
    config = module.LLaDA2MoeConfig(**json.loads((folder / "config.json").read_text()))
    config._attn_implementation = "sdpa"  # what from_pretrained picks
    state = checkpoint_state(folder)
    with default_dtype(state):
        model = module.LLaDA2MoeModelLM(config)
    model.load_state_dict(state, strict=True)
    dtype = next(iter(state.values())).dtype

    def cast_mask(_, args, kwargs):
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.is_floating_point():
            kwargs["attention_mask"] = mask.to(dtype)
        return args, kwargs

    model.model.register_forward_pre_hook(cast_mask, with_kwargs=True)
    return model.eval()


def main(modeling_py: str, checkpoint: str, cases: str, output: str) -> None:
    module = import_published(Path(modeling_py).resolve())
    model = published_model(module, Path(checkpoint))
    results = []
    with torch.no_grad():
        for case in json.loads(Path(cases).read_text()):
            prompt = torch.tensor([case["prompt"]], dtype=torch.long)
            tokens = model.generate(inputs=prompt, **case["options"])
            results.append(tokens[0].tolist())
    Path(output).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Parity with the published modeling code (``modeling_llada.py``, ``modeling_dream.py``).

Skipped unless ``MOSA_LLADA_REFERENCE`` / ``MOSA_DREAM_REFERENCE`` name a local copy of the
published file (next to its ``configuration_*.py``). The reference runs in
``MOSA_REFERENCE_PYTHON`` (default: this interpreter), which needs the transformers version
the published code was written for (4.57), e.g.::

    python -m venv --system-site-packages /tmp/refenv
    /tmp/refenv/bin/pip install "transformers==4.57.*"
    MOSA_REFERENCE_PYTHON=/tmp/refenv/bin/python MOSA_LLADA_REFERENCE=/tmp/ref/llada/modeling_llada.py \\
        MOSA_DREAM_REFERENCE=/tmp/ref/dream/modeling_dream.py pytest tests/models/test_model_parity.py -s

Both sides run the same tiny random checkpoint, in fp32 and in bf16 (the reference built as
``from_pretrained(torch_dtype=...)`` builds it); the test prints and checks
``max |logit difference| / max |logit|`` over the positions both define.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_checkpoints import tiny_model

REFERENCE_ENV = {"llada": "MOSA_LLADA_REFERENCE", "dream": "MOSA_DREAM_REFERENCE"}
RUNNER = Path(__file__).with_name("reference_logits.py")
MAX_RELATIVE_DIFFERENCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def parity_inputs(family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids; Dream's batch is left padded (its generation code masks padding, LLaDA's not)."""
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 120, (3, 24), generator=generator)
    mask = torch.ones_like(ids)
    if family == "dream":
        mask[1, :5] = 0
        mask[2, :11] = 0
        ids[mask == 0] = 125
    return ids, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_logits_match_published_code(family, dtype, tmp_path):
    modeling_py = os.environ.get(REFERENCE_ENV[family])
    if not modeling_py:
        pytest.skip(f"set {REFERENCE_ENV[family]} to a local copy of the published modeling file")
    python = os.environ.get("MOSA_REFERENCE_PYTHON", sys.executable)
    model = tiny_model(family, seed=7).to(dtype)
    model.save_pretrained(tmp_path / "ckpt")
    ids, mask = parity_inputs(family)
    save_file({"input_ids": ids, "attention_mask": mask}, str(tmp_path / "inputs.safetensors"))
    args = [
        family,
        modeling_py,
        tmp_path / "ckpt",
        tmp_path / "inputs.safetensors",
        tmp_path / "ref.safetensors",
    ]
    run = subprocess.run(
        [python, str(RUNNER), *map(str, args)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-4000:]
    reference = load_file(tmp_path / "ref.safetensors")["logits"]

    with torch.no_grad():
        ours = model(ids, mask if family == "dream" else None, return_logits=True).logits.float()
    # A shifted row's first real position is predicted from padding: defined by neither side.
    compared = mask.bool()
    if model.logits_shift:
        compared[:, 1:] &= mask[:, :-1].bool()
    difference = (ours - reference)[compared].abs().max().item()
    scale = reference[compared].abs().max().item()
    print(
        f"\n{family} {dtype}: max|diff| {difference:.3e}, max|logit| {scale:.3e}, ratio {difference / scale:.3e}"
    )
    assert difference / scale <= MAX_RELATIVE_DIFFERENCE[dtype]

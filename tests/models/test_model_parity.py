"""Parity with the published modeling code (``modeling_llada.py``, ``modeling_dream.py``,
``modeling_llada2_moe.py``, ``modeling_lladamoe.py``).

Skipped unless ``MOSA_LLADA_REFERENCE`` / ``MOSA_DREAM_REFERENCE`` / ``MOSA_LLADA2_REFERENCE`` /
``MOSA_LLADA_MOE_REFERENCE`` name a local copy of the published file (next to its
``configuration_*.py``; LLaDA2.1's ``modeling_llada21_moe.py`` runs as LLaDA2's). The reference runs in
``MOSA_REFERENCE_PYTHON`` (default: this interpreter), which needs the transformers version
the published code was written for (4.57), e.g.::

    python -m venv --system-site-packages /tmp/refenv
    /tmp/refenv/bin/pip install "transformers==4.57.*"
    MOSA_REFERENCE_PYTHON=/tmp/refenv/bin/python MOSA_LLADA_REFERENCE=/tmp/ref/llada/modeling_llada.py \\
        MOSA_DREAM_REFERENCE=/tmp/ref/dream/modeling_dream.py pytest tests/models/test_model_parity.py -s

Both sides run the same tiny random checkpoint, in fp32 and in bf16 (the reference built as
``from_pretrained(torch_dtype=...)`` builds it), on an unpadded and a left-padded batch
(padding masked as the published generation code masks it; not for LLaDA, whose code does
not), LLaDA2 also under its ``generate``'s block-diffusion mask; the test prints and checks
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

REFERENCE_ENV = {
    "llada": "MOSA_LLADA_REFERENCE",
    "dream": "MOSA_DREAM_REFERENCE",
    "llada2": "MOSA_LLADA2_REFERENCE",
    "llada_moe": "MOSA_LLADA_MOE_REFERENCE",
}
RUNNER = Path(__file__).with_name("reference_logits.py")
MAX_RELATIVE_DIFFERENCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
# LLaDA2 is also compared under the block-diffusion mask of its generate: 8 splits the 24
# tokens into whole blocks (as generate's canvas), 5 ends them with a partial block.
BLOCK_LENGTHS = {"llada2": (8, 5)}


def parity_inputs(padded: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids; with ``padded``, rows 1 and 2 left padded with the pad id 125."""
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 120, (3, 24), generator=generator)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :5] = 0
        mask[2, :11] = 0
        ids[mask == 0] = 125
    return ids, mask


@pytest.mark.parametrize("padding", ["unpadded", "padded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_logits_match_published_code(family, dtype, padding, tmp_path):
    modeling_py = os.environ.get(REFERENCE_ENV[family])
    if not modeling_py:
        pytest.skip(f"set {REFERENCE_ENV[family]} to a local copy of the published modeling file")
    if family == "llada" and padding == "padded":
        pytest.skip("the published LLaDA code does not mask padding")
    python = os.environ.get("MOSA_REFERENCE_PYTHON", sys.executable)
    model = tiny_model(family, seed=7).to(dtype)
    model.save_pretrained(tmp_path / "ckpt")
    ids, mask = parity_inputs(padding == "padded")
    save_file({"input_ids": ids, "attention_mask": mask}, str(tmp_path / "inputs.safetensors"))
    blocks = BLOCK_LENGTHS.get(family, ())
    args = [
        family,
        modeling_py,
        tmp_path / "ckpt",
        tmp_path / "inputs.safetensors",
        tmp_path / "ref.safetensors",
        ",".join(map(str, blocks)),
    ]
    run = subprocess.run(
        [python, str(RUNNER), *map(str, args)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-4000:]
    references = load_file(tmp_path / "ref.safetensors")
    assert set(references) == {"logits", *(f"logits_block{n}" for n in blocks)}

    # A shifted row's first real position is predicted from padding: defined by neither side.
    compared = mask.bool()
    if model.logits_shift:
        compared[:, 1:] &= mask[:, :-1].bool()
    given_mask = mask if padding == "padded" else None
    for block_length in (None, *blocks):
        key = "logits" if block_length is None else f"logits_block{block_length}"
        with torch.no_grad():
            ours = model(ids, given_mask, return_logits=True, block_length=block_length)
        difference = (ours.logits.float() - references[key])[compared].abs().max().item()
        scale = references[key][compared].abs().max().item()
        attention = "bidirectional" if block_length is None else f"block {block_length}"
        print(
            f"\n{family} {dtype} {padding} {attention}: max|diff| {difference:.3e}, "
            f"max|logit| {scale:.3e}, ratio {difference / scale:.3e}"
        )
        assert difference / scale <= MAX_RELATIVE_DIFFERENCE[dtype], key

"""GPU checks: bf16 by default on CUDA, agreement with the fp32 CPU model, the real-size presets.

Skipped without CUDA (docs/DESIGN.md §3); ``benchmarks/gpu_check.sh`` runs them on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import padded_batch

from mosa.models import build_model, family_of, load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float().cpu() - expected).abs().max() / expected.abs().max()).item()


@torch.no_grad()
def test_cuda_defaults_to_bf16_and_matches_the_cpu_model(checkpoint, model):
    gpu = load_model(checkpoint)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.bfloat16
    ids, mask = padded_batch([16, 9, 12], total=16)
    real = mask.bool()
    expected = model(ids, mask, return_logits=True).logits
    out = gpu(ids.cuda(), mask.cuda(), return_logits=True, return_cache=True)
    assert relative_error(out.logits[real.cuda()], expected[real]) < 3e-2
    block = gpu(ids[:, 8:12].cuda(), cache=out.cache, start=8)
    assert relative_error(block.hidden_states, out.hidden_states[:, 8:12].float().cpu()) < 2e-2
    if family_of(model).block_diffusion:  # LLaDA2: the Triton kernel's block-causal path
        expected = model(ids, mask, return_logits=True, block_length=4).logits
        causal = gpu(ids.cuda(), mask.cuda(), return_logits=True, block_length=4).logits
        assert relative_error(causal[real.cuda()], expected[real]) < 3e-2


@pytest.mark.parametrize("preset", ["llada-8b", "dream-7b", "llada2-mini", "llada-moe-7b"])
@torch.no_grad()
def test_real_size_presets_run_on_cuda(preset):
    model = build_model(preset, device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, 32000, (2, 64), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :20] = 0
    out = model(ids, mask, return_cache=True)
    assert out.hidden_states.shape == (2, 64, model.get_input_embeddings().embedding_dim)
    assert torch.isfinite(out.hidden_states[mask.bool()]).all()
    block = model(ids[:, 32:48], cache=out.cache, start=32)
    assert relative_error(block.hidden_states, out.hidden_states[:, 32:48].float().cpu()) < 5e-2
    del model, out, block
    torch.cuda.empty_cache()

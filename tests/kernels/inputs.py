"""Input builders and comparisons shared by the vocabulary-op tests.

Inputs are drawn in float64 from a seeded CPU generator and only then cast and moved, so a
test sees the same numbers on every device and backend.
"""

from __future__ import annotations

import math

import pytest
import torch

ON_GPU = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")

FP32_TOL = 1e-5
GRAD_TOL = 1e-4
BF16_TOL = 2e-2


def randn(shape, *, seed: int, scale: float = 1.0, dtype=torch.float32, device="cpu"):
    """``scale * N(0, 1)`` of ``shape``, the same numbers on every device."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator, dtype=torch.float64) * scale
    return values.to(device=device, dtype=dtype)


def randint(shape, low: int, high: int, *, seed: int, device="cpu"):
    """Integers in ``[low, high)`` as int64."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=generator).to(device)


def lm_head(n: int, vocab: int, d: int, *, seed: int, logit_scale: float = 3.0, **kw):
    """Hidden ``[n, d]`` and weight ``[vocab, d]`` whose logits have std ``logit_scale``."""
    hidden = randn((n, d), seed=seed, **kw)
    weight = randn((vocab, d), seed=seed + 1, scale=logit_scale / math.sqrt(d), **kw)
    return hidden, weight


def as64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def assert_close(actual, expected, *, rel: float, floor: float = 1.0, what: str = "value"):
    """``max |actual - expected| <= rel * max(floor, max |expected|)``, non-finite must agree.

    ``floor`` keeps the bound meaningful where every expected value is tiny (log-probs near 0)
    without turning it into an absolute tolerance for large values.
    """
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    a, e = as64(actual), as64(expected)
    finite = torch.isfinite(e)
    assert torch.equal(torch.isfinite(a), finite), (
        f"{what}: non-finite mismatch, got {a[torch.isfinite(a) != finite][:5].tolist()} "
        f"where the reference has {e[torch.isfinite(a) != finite][:5].tolist()}"
    )
    assert torch.equal(a[~finite], e[~finite]), f"{what}: infinities differ"
    if not finite.any():
        return
    diff = (a - e).abs()[finite]
    scale = max(floor, e[finite].abs().max().item())
    worst = diff.argmax().item()
    assert diff.max().item() <= rel * scale, (
        f"{what}: max |diff| {diff.max().item():.3e} > {rel:g} * {scale:.3e} "
        f"(got {a[finite][worst].item()!r}, expected {e[finite][worst].item()!r})"
    )

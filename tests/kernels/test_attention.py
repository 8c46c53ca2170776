"""``mosa_kernels.attention`` against the float64 reference, on every backend (docs/DESIGN.md §4.1)."""

from __future__ import annotations

import pytest
import torch

from mosa_kernels import attention
from mosa_kernels.reference.attention import attention as reference_attention

# The interpreter turns a loaded scalar (a one-element array) into a loop bound through
# NumPy's deprecated array-to-int conversion; it is Triton's own, not the kernels'.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning"
)

ON_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")

# max |out - ref| / max |ref| against the float64 reference. On a GPU the Triton kernels multiply
# fp32 as three tf32 products (fp32 accuracy, not tf32's), so fp32 holds 1e-5 there too.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def _key_valid(kind: str, batch: int, seqlen_k: int, gen: torch.Generator) -> torch.Tensor | None:
    """Key masks: None; left or right padding of growing length; valid keys only in a middle
    stretch that moves from item to item; 130 invalid keys (a whole key tile of 32 keys
    interpreted or 64 on a GPU, wherever tiles start) between valid keys; random holes; or an
    item with no key."""
    if kind == "none":
        return None
    positions = torch.arange(seqlen_k)[None, :]
    pads = torch.linspace(0, 0.8 * seqlen_k, batch).long()[:, None]
    if kind == "left":
        return positions >= pads
    if kind == "right":
        return positions < seqlen_k - pads
    if kind == "middle":
        first = torch.linspace(0.05 * seqlen_k, 0.5 * seqlen_k, batch).long()[:, None]
        return (positions >= first) & (positions < first + int(0.3 * seqlen_k))
    if kind == "gap":
        gap = (positions >= 0.2 * seqlen_k) & (positions < 0.2 * seqlen_k + 130)
        return (positions >= torch.arange(batch)[:, None] * 3) & ~gap
    if kind == "random":
        return torch.rand(batch, seqlen_k, generator=gen) < 0.6
    if kind == "one_empty":
        valid = torch.rand(batch, seqlen_k, generator=gen) < 0.7
        valid[-1] = False
        return valid
    raise ValueError(kind)


def _inputs(shape, dtype, device, seed):
    """Fresh random q, k, v (never zeros) and a random output gradient."""
    batch, seqlen_q, seqlen_k, q_heads, kv_heads, head_dim = shape
    gen = torch.Generator().manual_seed(seed)

    def randn(*size):
        return torch.randn(*size, generator=gen).to(device=device, dtype=dtype)

    q = randn(batch, seqlen_q, q_heads, head_dim)
    k = randn(batch, seqlen_k, kv_heads, head_dim)
    v = randn(batch, seqlen_k, kv_heads, head_dim)
    grad_out = randn(batch, seqlen_q, q_heads, head_dim)
    return q, k, v, grad_out, gen


def _poison_free_memory(nbytes: int, device: torch.device) -> None:
    """Leaves NaN in memory the allocator hands out next, so rows an op never writes show up.

    Reliable with CUDA's caching allocator; best effort on the CPU.
    """
    junk = torch.full((nbytes // 4 + 1,), float("nan"), device=device)
    del junk


def _forward_backward(q, k, v, key_valid, grad_out, scale=None):
    """Output and (dq, dk, dv) of ``attention`` for the given output gradient."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    _poison_free_memory(4 * q.numel() * q.element_size(), q.device)
    out = attention(q, k, v, key_valid, scale=scale)
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


def _reference(q, k, v, key_valid, grad_out, scale=None):
    """The same in float64 through the reference."""
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = reference_attention(q, k, v, key_valid, scale)
    out.backward(grad_out.double())
    return out.detach(), q.grad, k.grad, v.grad


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp_min(1e-30)
    return ((actual.double() - expected).abs().max() / scale).item()


def _check_against_reference(q, k, v, key_valid, grad_out, scale=None):
    results = _forward_backward(q, k, v, key_valid, grad_out, scale)
    expected = _reference(q, k, v, key_valid, grad_out, scale)
    tolerance = TOLERANCE[q.dtype]
    for name, actual, ref, like in zip(
        ("out", "dq", "dk", "dv"), results, expected, (q, q, k, v), strict=True
    ):
        assert actual.dtype == like.dtype and actual.shape == like.shape, name
        assert torch.isfinite(actual).all(), f"{name} has NaN/inf"
        error = _relative_error(actual, ref)
        assert error <= tolerance, f"{name}: relative error {error:.2e} > {tolerance:.0e}"


# (batch, Lq, Lk, Hq, Hkv, D), key mask. Odd lengths are not multiples of any tile size.
CASES = [
    pytest.param((2, 37, 101, 4, 4, 32), "none", id="no-mask"),
    pytest.param((3, 37, 101, 4, 4, 32), "left", id="left-padding"),
    pytest.param((3, 37, 101, 4, 4, 32), "right", id="right-padding"),
    pytest.param((3, 37, 101, 8, 2, 64), "middle", id="valid-keys-in-the-middle"),
    pytest.param((2, 37, 200, 4, 1, 32), "gap", id="invalid-tile-between-valid-keys"),
    pytest.param((2, 37, 101, 4, 4, 64), "random", id="random-mask-d64"),
    pytest.param((2, 24, 50, 2, 2, 32), "one_empty", id="item-without-keys"),
    pytest.param((2, 37, 101, 8, 2, 32), "left", id="gqa4"),
    pytest.param((2, 21, 70, 7, 1, 32), "random", id="gqa7"),
    pytest.param((2, 50, 30, 2, 1, 64), "left", id="lq-longer-than-lk"),
    pytest.param((3, 300, 517, 8, 2, 128), "left", id="gpu-tiles-d128", marks=needs_gpu),
]


@pytest.mark.parametrize("shape, mask", CASES)
def test_matches_float64_reference(backend, device, shape, mask):
    q, k, v, grad_out, gen = _inputs(shape, torch.float32, device, seed=1)
    key_valid = _key_valid(mask, shape[0], shape[2], gen)
    if key_valid is not None:
        key_valid = key_valid.to(device)
    _check_against_reference(q, k, v, key_valid, grad_out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_matches_float64_reference(backend, device, dtype):
    # The interpreter widens bf16 tiles to fp32 before its dots; on a GPU the tensor cores take
    # them as they are, over Dream's head shape (28 q / 4 kv heads, D = 128).
    shape = (3, 300, 517, 28, 4, 128) if device.type == "cuda" else (2, 37, 101, 4, 2, 64)
    q, k, v, grad_out, gen = _inputs(shape, dtype, device, seed=2)
    key_valid = _key_valid("left", shape[0], shape[2], gen).to(device)
    _check_against_reference(q, k, v, key_valid, grad_out)


def test_item_without_valid_keys_gives_zeros_and_zero_grads(backend, device):
    shape = (2, 24, 50, 4, 2, 32)
    q, k, v, grad_out, gen = _inputs(shape, torch.float32, device, seed=3)
    key_valid = _key_valid("one_empty", shape[0], shape[2], gen).to(device)
    out, dq, dk, dv = _forward_backward(q, k, v, key_valid, grad_out)
    for name, tensor in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert torch.isfinite(tensor).all(), f"{name} has NaN/inf"
        assert torch.equal(tensor[-1], torch.zeros_like(tensor[-1])), f"{name} of the empty item"
        assert tensor[0].abs().max() > 0, f"{name} of the item with keys"


def test_strided_inputs_and_custom_scale(backend, device):
    """q, k, v as views into one fused projection, the way a model hands them over, and an
    output gradient broadcast along every axis but D (strides of 0)."""
    batch, seqlen, heads, head_dim = 2, 45, 4, 32
    gen = torch.Generator().manual_seed(4)
    fused = torch.randn(batch, seqlen, 3, heads, head_dim, generator=gen).to(device)
    q, k, v = fused.unbind(dim=2)
    assert not q.is_contiguous()
    grad_out = torch.randn(head_dim, generator=gen).to(device).expand(batch, seqlen, heads, -1)
    key_valid = _key_valid("left", batch, seqlen, gen).to(device)
    _check_against_reference(q, k, v, key_valid, grad_out, scale=0.3)


def test_scores_far_below_zero(backend, device):
    """Every valid score near -120 (log-sum-exp below fp32's exponent range): exp(score - lse)
    must not overflow at masked keys, whose score a kernel that zeroes their k sees as 0."""
    shape = (2, 21, 70, 4, 2, 32)
    q, k, v, grad_out, gen = _inputs(shape, torch.float32, device, seed=7)
    q = -(4 + 0.1 * q)
    k = 1 + 0.1 * k
    key_valid = _key_valid("random", shape[0], shape[2], gen).to(device)
    results = _forward_backward(q, k, v, key_valid, grad_out, scale=1.0)
    expected = _reference(q, k, v, key_valid, grad_out, scale=1.0)
    for name, actual, ref in zip(("out", "dq", "dk", "dv"), results, expected, strict=True):
        assert torch.isfinite(actual).all(), f"{name} has NaN/inf"
        # Scores of magnitude ~120 carry an fp32 rounding of ~1e-5 on their own.
        error = _relative_error(actual, ref)
        assert error <= 1e-4, f"{name}: relative error {error:.2e}"


def test_padding_matches_keys_removed(monkeypatch, device):
    """Padding on both sides, longer than a key tile, is skipped: the result equals attention over
    the valid keys alone, and the padding gets zero gradients and is never read."""
    pytest.importorskip("triton")
    monkeypatch.setenv("MOSA_BACKEND", "triton")
    pad, tail, seqlen_q, seqlen_k = 70, 75, 23, 233
    q, k, v, grad_out, _ = _inputs((1, seqlen_q, seqlen_k, 4, 2, 32), torch.float32, device, 5)
    keep = slice(pad, seqlen_k - tail)
    for t in (k, v):
        t[:, :pad] = float("nan")
        t[:, keep.stop :] = float("nan")
    key_valid = torch.zeros(1, seqlen_k, dtype=torch.bool, device=device)
    key_valid[:, keep] = True

    out, dq, dk, dv = _forward_backward(q, k, v, key_valid, grad_out)
    out_trim, dq_trim, dk_trim, dv_trim = _forward_backward(
        q, k[:, keep], v[:, keep], None, grad_out
    )
    for name, actual, expected in (
        ("out", out, out_trim),
        ("dq", dq, dq_trim),
        ("dk", dk[:, keep], dk_trim),
        ("dv", dv[:, keep], dv_trim),
    ):
        error = _relative_error(actual, expected.double())
        assert error <= TOLERANCE[torch.float32], f"{name}: relative error {error:.2e}"
    for name, grad in (("dk", dk), ("dv", dv)):
        grad[:, keep] = 0
        assert torch.equal(grad, torch.zeros_like(grad)), f"{name} of the padding"


@pytest.mark.parametrize("mask", ["left", "right", "middle", "gap", "random"])
@pytest.mark.slow
def test_masked_keys_are_never_read(monkeypatch, device, mask):
    """NaN in every masked key changes nothing, whether the key lies outside the range of valid
    keys (skipped) or in a hole inside it (loads masked)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("MOSA_BACKEND", "triton")
    shape = (3, 23, 200, 4, 2, 32)
    q, k, v, grad_out, gen = _inputs(shape, torch.float32, device, seed=8)
    key_valid = _key_valid(mask, shape[0], shape[2], gen).to(device)
    masked = ~key_valid[:, :, None, None]
    expected = _forward_backward(q, k, v, key_valid, grad_out)
    k_nan, v_nan = (t.masked_fill(masked, float("nan")) for t in (k, v))
    actual = _forward_backward(q, k_nan, v_nan, key_valid, grad_out)
    for name, got, want in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        assert torch.equal(got, want), name


def test_key_ranges_span_the_valid_keys(device):
    pytest.importorskip("triton")
    from mosa_kernels.triton_kernels import attention as triton_attention

    seqlen_k = 2 * triton_attention._RANGE_BLOCK + 37  # several steps, the last one partial
    key_valid = torch.zeros(6, seqlen_k, dtype=torch.bool)
    key_valid[0, 1500:] = True  # left padding
    key_valid[1, :700] = True  # right padding
    key_valid[2, 1000:1100] = True  # both, across a step boundary
    key_valid[3, [5, 2000]] = True  # holes
    key_valid[4, -1] = True  # only the last key
    # key_valid[5]: no valid key
    key_range = triton_attention._key_ranges(key_valid.to(device).view(torch.uint8))
    assert [tuple(item) for item in key_range.tolist()] == [
        (1500, seqlen_k, 0),
        (0, 700, 0),
        (1000, 1100, 0),
        (5, 2001, 1),
        (seqlen_k - 1, seqlen_k, 0),
        (0, 0, 0),
    ]


def test_rejects_bad_arguments(device):
    q = torch.randn(2, 8, 4, 32, device=device)
    k = torch.randn(2, 16, 2, 32, device=device)
    valid = torch.ones(2, 16, dtype=torch.bool, device=device)
    with pytest.raises(ValueError, match="q must have at least 4"):
        attention(q[0], k, k)
    with pytest.raises(ValueError, match=r"q must be \[B, L, H, D\]"):
        attention(q[None], k, k)
    with pytest.raises(ValueError, match="same shape"):
        attention(q, k, k[:, :8])
    with pytest.raises(TypeError, match="share a dtype"):
        attention(q, k.half(), k.half())
    with pytest.raises(TypeError, match="k must be .*int64"):
        attention(q, k.long(), k.long())
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        attention(q.tolist(), k, k)
    with pytest.raises(ValueError, match="batch or head dim"):
        attention(q[:1], k, k)
    with pytest.raises(ValueError, match="multiple of k/v heads"):
        attention(q[:, :, :3], k, k)
    with pytest.raises(ValueError, match="key_valid must be bool"):
        attention(q, k, k, valid.float())
    with pytest.raises(ValueError, match="key_valid must be bool"):
        attention(q, k, k, valid[:, :8])
    with pytest.raises(ValueError, match="same device"):
        attention(q, k, k, valid.to("meta"))


def test_triton_rejects_unsupported_head_dim_and_dtype(monkeypatch, device):
    pytest.importorskip("triton")
    monkeypatch.setenv("MOSA_BACKEND", "triton")
    q = torch.randn(1, 8, 2, 48, device=device)
    with pytest.raises(ValueError, match="head dim D in"):
        attention(q, q, q)
    q = torch.randn(1, 8, 2, 32, device=device, dtype=torch.float64)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        attention(q, q, q)

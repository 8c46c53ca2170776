"""``mosa_kernels.attention`` against the float64 reference, on every backend (docs/DESIGN.md §4.1)."""

from __future__ import annotations

import pytest
import torch

from mosa_kernels import attention
from mosa_kernels.reference.attention import attention as reference_attention

# The interpreter turns a loaded scalar (a one-element array) into a loop bound through
# NumPy's deprecated array-to-int conversion; it is Triton's own, not the kernels'.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning"
    ),
    # Outputs the kernels allocate start as NaN, so a row a kernel forgets to write fails.
    pytest.mark.usefixtures("poison_outputs"),
]

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


def _forward_backward(q, k, v, key_valid, grad_out, scale=None, block_length=None):
    """Output and (dq, dk, dv) of ``attention`` for the given output gradient."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = attention(q, k, v, key_valid, scale=scale, block_length=block_length)
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


def _reference(q, k, v, key_valid, grad_out, scale=None, block_length=None):
    """The same in float64 through the reference."""
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = reference_attention(q, k, v, key_valid, scale, block_length)
    out.backward(grad_out.double())
    return out.detach(), q.grad, k.grad, v.grad


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp_min(1e-30)
    return ((actual.double() - expected).abs().max() / scale).item()


def _check_against_reference(q, k, v, key_valid, grad_out, scale=None, block_length=None):
    results = _forward_backward(q, k, v, key_valid, grad_out, scale, block_length)
    expected = _reference(q, k, v, key_valid, grad_out, scale, block_length)
    tolerance = TOLERANCE[q.dtype]
    for name, actual, ref, like in zip(
        ("out", "dq", "dk", "dv"), results, expected, (q, q, k, v), strict=True
    ):
        assert actual.dtype == like.dtype and actual.shape == like.shape, name
        assert torch.isfinite(actual).all(), f"{name} has NaN/inf"
        error = _relative_error(actual, ref)
        assert error <= tolerance, f"{name}: relative error {error:.2e} > {tolerance:.0e}"


# (batch, Lq, Lk, Hq, Hkv, D), key mask, block length (None: non-causal). Odd lengths are not
# multiples of any tile size.
CASES = [
    pytest.param((2, 37, 101, 4, 4, 32), "none", None, id="no-mask"),
    pytest.param((3, 37, 101, 4, 4, 32), "left", None, id="left-padding"),
    pytest.param((3, 37, 101, 4, 4, 32), "right", None, id="right-padding"),
    pytest.param((3, 37, 101, 8, 2, 64), "middle", None, id="valid-keys-in-the-middle"),
    pytest.param((2, 37, 200, 4, 1, 32), "gap", None, id="invalid-tile-between-valid-keys"),
    pytest.param((2, 37, 101, 4, 4, 64), "random", None, id="random-mask-d64"),
    pytest.param((2, 24, 50, 2, 2, 32), "one_empty", None, id="item-without-keys"),
    pytest.param((2, 37, 101, 8, 2, 32), "left", None, id="gqa4"),
    pytest.param((2, 21, 70, 7, 1, 32), "random", None, id="gqa7"),
    pytest.param((2, 50, 30, 2, 1, 64), "left", None, id="lq-longer-than-lk"),
    pytest.param((3, 300, 517, 8, 2, 128), "left", None, id="gpu-tiles-d128", marks=needs_gpu),
    # Block-causal over the whole sequence (Lq == Lk) and over a query slice after a cached
    # prefix (Lq < Lk). With left padding some rows have no key to attend: with block 1 the
    # padded item's first 29 rows, with block 16 the first block of the second item and the
    # first two of the third, in the slice the second item's rows 0..4 (keys 0..55 padding).
    pytest.param((2, 37, 37, 4, 4, 32), "none", 3, id="causal-whole-block3"),
    pytest.param((2, 37, 37, 4, 2, 32), "left", 1, id="causal-whole-block1-padded"),
    pytest.param((3, 45, 45, 8, 2, 32), "left", 16, id="causal-whole-block16-gqa4-padded"),
    pytest.param((2, 37, 101, 4, 4, 32), "none", 16, id="causal-slice-block16"),
    pytest.param((2, 21, 70, 4, 2, 32), "left", 3, id="causal-slice-block3-padded"),
    pytest.param((2, 21, 70, 7, 1, 32), "random", 16, id="causal-slice-block16-gqa7"),
    pytest.param((2, 37, 200, 4, 1, 32), "gap", 16, id="causal-slice-invalid-tile"),
    pytest.param((2, 37, 101, 4, 2, 64), "left", 128, id="causal-block-longer-than-lk"),
    pytest.param((2, 24, 50, 2, 2, 32), "one_empty", 3, id="causal-item-without-keys"),
    pytest.param((3, 300, 517, 8, 2, 128), "left", 32, id="causal-gpu-tiles", marks=needs_gpu),
    # LLaDA2-mini's heads (16 q / 4 kv, D 128) and block 32: a whole sequence and one block's
    # queries over 1024 cached keys.
    pytest.param((2, 1024, 1024, 16, 4, 128), "left", 32, id="causal-llada2", marks=needs_gpu),
    pytest.param((2, 32, 1024, 16, 4, 128), "left", 32, id="causal-llada2-slice", marks=needs_gpu),
]


@pytest.mark.parametrize("shape, mask, block_length", CASES)
def test_matches_float64_reference(backend, device, shape, mask, block_length):
    q, k, v, grad_out, gen = _inputs(shape, torch.float32, device, seed=1)
    key_valid = _key_valid(mask, shape[0], shape[2], gen)
    if key_valid is not None:
        key_valid = key_valid.to(device)
    _check_against_reference(q, k, v, key_valid, grad_out, block_length=block_length)


@pytest.mark.parametrize("block_length", [None, pytest.param(32, id="causal")])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_matches_float64_reference(backend, device, dtype, block_length):
    # The interpreter widens bf16 tiles to fp32 before its dots; on a GPU the tensor cores take
    # them as they are, over Dream's head shape (28 q / 4 kv heads, D = 128).
    shape = (3, 300, 517, 28, 4, 128) if device.type == "cuda" else (2, 37, 101, 4, 2, 64)
    q, k, v, grad_out, gen = _inputs(shape, dtype, device, seed=2)
    key_valid = _key_valid("left", shape[0], shape[2], gen).to(device)
    _check_against_reference(q, k, v, key_valid, grad_out, block_length=block_length)


@pytest.mark.parametrize("block_length", [None, 3])
def test_item_without_valid_keys_gives_zeros_and_zero_grads(backend, device, block_length):
    shape = (2, 24, 50, 4, 2, 32)
    q, k, v, grad_out, gen = _inputs(shape, torch.float32, device, seed=3)
    key_valid = _key_valid("one_empty", shape[0], shape[2], gen).to(device)
    out, dq, dk, dv = _forward_backward(q, k, v, key_valid, grad_out, block_length=block_length)
    for name, tensor in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert torch.isfinite(tensor).all(), f"{name} has NaN/inf"
        assert torch.equal(tensor[-1], torch.zeros_like(tensor[-1])), f"{name} of the empty item"
        assert tensor[0].abs().max() > 0, f"{name} of the item with keys"


@pytest.mark.parametrize("block_length", [1, 3, 16])
def test_block_causal_rows_without_keys_give_zeros_and_zero_grads(backend, device, block_length):
    """Left padding over a query slice: rows whose blocks up to their own hold only padding
    output zeros and get zero dq, keys no row may attend get zero dk and dv, and nothing is
    NaN; the other rows and keys get nonzero values."""
    batch, seqlen_q, seqlen_k = 2, 21, 70
    q, k, v, grad_out, _ = _inputs((batch, seqlen_q, seqlen_k, 4, 2, 32), torch.float32, device, 6)
    pads = torch.tensor([[40], [66]])
    key_valid = (torch.arange(seqlen_k) >= pads).to(device)
    query_block = torch.arange(seqlen_k - seqlen_q, seqlen_k) // block_length
    seen = key_valid[:, None, :] & (
        torch.arange(seqlen_k, device=device) // block_length <= query_block.to(device)[:, None]
    )
    row_has_key, key_is_seen = seen.any(dim=2), seen.any(dim=1)  # [B, Lq], [B, Lk]
    assert (~row_has_key).any() and row_has_key.any()
    out, dq, dk, dv = _forward_backward(q, k, v, key_valid, grad_out, block_length=block_length)
    for name, tensor, has_input in (
        ("out", out, row_has_key),
        ("dq", dq, row_has_key),
        ("dk", dk, key_is_seen),
        ("dv", dv, key_is_seen),
    ):
        assert torch.isfinite(tensor).all(), f"{name} has NaN/inf"
        assert torch.equal(tensor[~has_input], torch.zeros_like(tensor[~has_input])), name
        assert (tensor[has_input].abs().amax(dim=(1, 2)) > 0).all(), name


@pytest.mark.parametrize("block_length", [None, 4])
def test_strided_inputs_and_custom_scale(backend, device, block_length):
    """q, k, v as views into one fused projection, the way a model hands them over, and an
    output gradient broadcast along every axis but D (strides of 0)."""
    batch, seqlen, heads, head_dim = 2, 45, 4, 32
    gen = torch.Generator().manual_seed(4)
    fused = torch.randn(batch, seqlen, 3, heads, head_dim, generator=gen).to(device)
    q, k, v = fused.unbind(dim=2)
    assert not q.is_contiguous()
    grad_out = torch.randn(head_dim, generator=gen).to(device).expand(batch, seqlen, heads, -1)
    key_valid = _key_valid("left", batch, seqlen, gen).to(device)
    _check_against_reference(q, k, v, key_valid, grad_out, scale=0.3, block_length=block_length)


@pytest.mark.parametrize("block_length", [None, 5])
def test_scores_far_below_zero(backend, device, block_length):
    """Every valid score near -120 (log-sum-exp below fp32's exponent range): exp(score - lse)
    must not overflow at masked keys, whose score a kernel that zeroes their k sees as 0."""
    shape = (2, 21, 70, 4, 2, 32)
    q, k, v, grad_out, gen = _inputs(shape, torch.float32, device, seed=7)
    q = -(4 + 0.1 * q)
    k = 1 + 0.1 * k
    key_valid = _key_valid("random", shape[0], shape[2], gen).to(device)
    results = _forward_backward(q, k, v, key_valid, grad_out, 1.0, block_length)
    expected = _reference(q, k, v, key_valid, grad_out, 1.0, block_length)
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


def _largest_tile() -> int:
    """The largest BLOCK_M or BLOCK_N the Triton kernels run fp32 with here (powers of two, so
    every tile boundary of every kernel falls on a multiple of it)."""
    from mosa_kernels.triton_kernels import attention as triton_attention

    configs = [
        launcher.interpreter_config if triton_attention._INTERPRETING else launcher.fp32_config
        for launcher in (triton_attention._forward, triton_attention._dkdv, triton_attention._dq)
    ]
    return max(max(config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]) for config in configs)


# (key position of query row 0, block length, left padding of the two items). Padding moves the
# key tiles off multiples of the tile size (they start at the first valid key).
LATER_BLOCKS = [
    pytest.param(0, 3, None, id="whole-block3"),
    pytest.param(-3, 16, (3, 7), id="slice-block16-padded"),
]


@pytest.mark.parametrize("offset, block_length, pads", LATER_BLOCKS)
def test_later_key_blocks_are_never_read(monkeypatch, device, offset, block_length, pads):
    """NaN in K and V of every key past the blocks that the first query tiles see changes
    neither those rows' outputs nor their dq: a query tile's key loop stops at its last row's
    block end. The rows checked are whole query tiles of every kernel, so a kernel that loaded
    any later key (even with its score masked) would spread NaN into them through p @ v.
    ``offset`` < 0 counts from the tile size: Lk - Lq = tile + offset."""
    pytest.importorskip("triton")
    monkeypatch.setenv("MOSA_BACKEND", "triton")
    tile = _largest_tile()
    offset = offset % tile
    rows, seqlen_q = 2 * tile, 3 * tile - 5
    seqlen_k = seqlen_q + offset
    unseen = -(-(offset + rows) // block_length) * block_length  # the block end of row rows - 1
    assert unseen < seqlen_k
    q, k, v, grad_out, _ = _inputs((2, seqlen_q, seqlen_k, 4, 2, 32), torch.float32, device, 10)
    key_valid = None
    if pads is not None:
        key_valid = (torch.arange(seqlen_k) >= torch.tensor(pads)[:, None]).to(device)
    expected = _forward_backward(q, k, v, key_valid, grad_out, block_length=block_length)
    k_nan, v_nan = k.clone(), v.clone()
    k_nan[:, unseen:] = v_nan[:, unseen:] = float("nan")
    out, dq, _, _ = _forward_backward(
        q, k_nan, v_nan, key_valid, grad_out, block_length=block_length
    )
    assert out[:, rows:].isnan().any(), "the later rows see the NaN keys"
    assert torch.equal(out[:, :rows], expected[0][:, :rows]), "out"
    assert torch.equal(dq[:, :rows], expected[1][:, :rows]), "dq"


@pytest.mark.parametrize(
    "offset, block_length",
    [pytest.param(0, 3, id="whole-block3"), pytest.param(-3, 16, id="slice-block16")],
)
def test_query_tiles_before_a_key_block_are_never_read(monkeypatch, device, offset, block_length):
    """NaN in q and the output gradient of the first query tiles leaves dK and dV of the keys
    past those rows' blocks exactly as with a zero gradient there: the dK/dV kernel starts its
    query loop at the first tile that can see its keys. Had it read an earlier tile (even with
    its probabilities masked), the NaN dO would reach dV through p^T @ dO."""
    pytest.importorskip("triton")
    monkeypatch.setenv("MOSA_BACKEND", "triton")
    tile = _largest_tile()
    offset = offset % tile
    seqlen_q = 3 * tile - 5
    seqlen_k = seqlen_q + offset
    keys_from = 2 * tile  # a multiple of every key tile
    # Whole query tiles before the first row whose block reaches keys_from.
    rows = (keys_from // block_length * block_length - offset) // tile * tile
    assert rows > 0
    q, k, v, grad_out, _ = _inputs((2, seqlen_q, seqlen_k, 4, 2, 32), torch.float32, device, 11)
    grad_zeroed = grad_out.clone()
    grad_zeroed[:, :rows] = 0
    _, _, dk_expected, dv_expected = _forward_backward(
        q, k, v, None, grad_zeroed, block_length=block_length
    )
    q_nan, grad_nan = q.clone(), grad_out.clone()
    q_nan[:, :rows] = grad_nan[:, :rows] = float("nan")
    _, _, dk, dv = _forward_backward(q_nan, k, v, None, grad_nan, block_length=block_length)
    assert dk[:, :keys_from].isnan().any(), "the earlier keys get the NaN rows' gradients"
    assert torch.equal(dk[:, keys_from:], dk_expected[:, keys_from:]), "dk"
    assert torch.equal(dv[:, keys_from:], dv_expected[:, keys_from:]), "dv"


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
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="block_length must be a positive int"):
            attention(q, k, k, block_length=bad)
    with pytest.raises(ValueError, match="block_length needs Lq <= Lk"):
        attention(k.repeat(1, 1, 2, 1), q[:, :, :2], q[:, :, :2], block_length=4)


def test_triton_rejects_unsupported_head_dim_and_dtype(monkeypatch, device):
    pytest.importorskip("triton")
    monkeypatch.setenv("MOSA_BACKEND", "triton")
    q = torch.randn(1, 8, 2, 48, device=device)
    with pytest.raises(ValueError, match="head dim D in"):
        attention(q, q, q)
    q = torch.randn(1, 8, 2, 32, device=device, dtype=torch.float64)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        attention(q, q, q)

"""``attention``: bidirectional (or block-causal) masked attention (docs/DESIGN.md §4.1).

One autograd Function for every backend: the forward keeps what the backend's kernel returns
for the backward (Triton: the rows' log-sum-exp) and hands it back to the same backend.
"""

from __future__ import annotations

import torch

from ..dispatch import backend_name, kernels_for
from ._checks import check_positive_int, check_same_device, check_tensor

TRITON_HEAD_DIMS = (32, 64, 128)
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_valid, scale, block_length):
        ctx.scale, ctx.block_length = scale, block_length
        out, stats = kernels_for(q.device).attention_forward(
            q, k, v, key_valid, scale, block_length
        )
        ctx.save_for_backward(q, k, v, key_valid, out, stats)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, key_valid, out, stats = ctx.saved_tensors
        dq, dk, dv = kernels_for(q.device).attention_backward(
            grad_out, q, k, v, key_valid, out, stats, ctx.scale,
            needs_dq=ctx.needs_input_grad[0],
            needs_dkdv=ctx.needs_input_grad[1] or ctx.needs_input_grad[2],
            block_length=ctx.block_length,
        )  # fmt: skip
        return dq, dk, dv, None, None, None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    block_length: int | None = None,
) -> torch.Tensor:
    """Non-causal (or block-causal) attention with a key mask, in the layout projections produce.

    Args:
        q: ``[B, Lq, Hq, D]``; k, v: ``[B, Lk, Hkv, D]`` with ``Hq % Hkv == 0`` (GQA) and
            ``Lq <= Lk`` allowed (a query block over a longer cached K/V). The Triton backend
            takes D in {32, 64, 128} and fp32/fp16/bf16.
        key_valid: ``bool[B, Lk]``, True where a key may be attended (any pattern; left
            padding is the common case). A batch item with no valid key outputs zeros.
        scale: softmax scale, default ``D ** -0.5``.
        block_length: block-causal attention (LLaDA2's block diffusion): the queries are the
            sequence's last ``Lq`` positions (all of it when ``Lq == Lk``, a cached prefix
            before them otherwise; ``Lq > Lk`` is refused), and query position i attends to
            key j only if ``j // block_length <= i // block_length``: bidirectional inside a
            block, causal across blocks, blocks counted from key position 0. None: every key.
            A query row with no allowed key outputs zeros.

    Returns ``[B, Lq, Hq, D]`` in q's dtype; differentiable w.r.t. q, k and v.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim_min=4, floating=True)
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, L, H, D], got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(
            f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    batch, _, q_heads, head_dim = q.shape
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(
            f"k/v {tuple(k.shape)} do not match q {tuple(q.shape)} in batch or head dim"
        )
    if q_heads % k.shape[2]:
        raise ValueError(
            f"q heads ({q_heads}) must be a multiple of k/v heads ({k.shape[2]}) for GQA"
        )
    if key_valid is not None:
        if not isinstance(key_valid, torch.Tensor):
            raise TypeError(f"key_valid must be a torch.Tensor, got {type(key_valid).__name__}")
        if key_valid.dtype != torch.bool or key_valid.shape != (batch, k.shape[1]):
            raise ValueError(
                f"key_valid must be bool [B, Lk] = {(batch, k.shape[1])}, "
                f"got {key_valid.dtype} {tuple(key_valid.shape)}"
            )
    if block_length is not None:
        check_positive_int("block_length", block_length)
        if q.shape[1] > k.shape[1]:
            raise ValueError(
                f"block_length needs Lq <= Lk (the queries are the sequence's last Lq "
                f"positions), got Lq = {q.shape[1]} > Lk = {k.shape[1]}; pass the whole K/V"
            )
    device = check_same_device(q=q, k=k, v=v, key_valid=key_valid)
    if scale is None:
        scale = head_dim**-0.5
    if backend_name(device) == "triton":
        _check_triton_support(head_dim, q.dtype)
    return _Attention.apply(q, k, v, key_valid, float(scale), block_length or 0)


def _check_triton_support(head_dim: int, dtype: torch.dtype) -> None:
    if head_dim not in TRITON_HEAD_DIMS:
        raise ValueError(
            f"the Triton attention kernel takes head dim D in {TRITON_HEAD_DIMS}, got {head_dim}; "
            "pad the heads or use MOSA_BACKEND=torch"
        )
    if dtype not in TRITON_DTYPES:
        raise TypeError(
            f"the Triton attention kernel takes float32, float16 or bfloat16, got {dtype}; "
            "cast the inputs or use MOSA_BACKEND=torch"
        )

"""Masked attention, the spec: SDPA with a boolean mask, GQA expanded; optionally block-causal."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
    block_length: int | None = None,
) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` per head.

    q ``[B, Lq, Hq, D]``, k/v ``[B, Lk, Hkv, D]`` with ``Hq % Hkv == 0``; ``key_valid``
    ``bool[B, Lk]``. Non-causal, or with ``block_length`` block-causal: the queries are the
    last Lq positions of the sequence, and query position i attends to key j only if
    ``j // block_length <= i // block_length``. Query rows with no allowed key output zeros.
    """
    batch, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    group = q.shape[2] // k.shape[2]
    qh = q.transpose(1, 2)
    kh = k.transpose(1, 2).repeat_interleave(group, dim=1)
    vh = v.transpose(1, 2).repeat_interleave(group, dim=1)
    allowed = torch.ones(batch, lq, lk, dtype=torch.bool, device=q.device)
    if key_valid is not None:
        allowed &= key_valid[:, None, :]
    if block_length is not None:
        key_block = torch.arange(lk, device=q.device) // block_length
        query_block = torch.arange(lk - lq, lk, device=q.device) // block_length
        allowed &= key_block[None, None, :] <= query_block[None, :, None]
    has_key = allowed.any(dim=2)
    # A row with no allowed key would be NaN in SDPA; attend to everything there, then zero it.
    mask = (allowed | ~has_key[:, :, None])[:, None]
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
    out = out * has_key[:, None, :, None].to(out.dtype)
    return out.transpose(1, 2)

"""Bidirectional masked attention, the spec: SDPA with a boolean key mask, GQA expanded."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` per head, non-causal.

    q ``[B, Lq, Hq, D]``, k/v ``[B, Lk, Hkv, D]`` with ``Hq % Hkv == 0``; ``key_valid``
    ``bool[B, Lk]``. Query rows of a batch item with no valid key output zeros.
    """
    group = q.shape[2] // k.shape[2]
    qh = q.transpose(1, 2)
    kh = k.transpose(1, 2).repeat_interleave(group, dim=1)
    vh = v.transpose(1, 2).repeat_interleave(group, dim=1)
    if key_valid is None:
        out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)
        return out.transpose(1, 2)
    has_key = key_valid.any(dim=1)
    # A row with no valid key would be NaN in SDPA; attend to everything there, then zero it.
    mask = (key_valid | ~has_key[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
    out = out * has_key[:, None, None, None].to(out.dtype)
    return out.transpose(1, 2)

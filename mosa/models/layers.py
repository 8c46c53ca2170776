"""Building blocks the families share: RMSNorm, rotary embeddings, self-attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mosa_kernels import attention

from .cache import KVCache


class RMSNorm(nn.Module):
    """``weight * x / rms(x) (+ bias)``, the statistics in fp32 and the result cast back first.

    Both published models normalise this way (``RMSLayerNorm``, ``DreamRMSNorm``): the
    normalised activations are cast to the input dtype before the weight multiplies them.
    """

    def __init__(self, dim: int, eps: float, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * normed.to(x.dtype)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def rotary_tables(
    positions: torch.Tensor, rotary_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``cos, sin`` of shape ``[*positions.shape, rotary_dim]`` (half-split layout).

    ``rotary_dim`` is the head dim, or under partial RoPE (LLaDA2, LLaDA-MoE) the leading dims
    that rotate: the frequencies are spread over those dims only, as Hugging Face's default
    RoPE does for ``partial_rotary_factor``.
    """
    exponents = torch.arange(0, rotary_dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = 1.0 / (theta ** (exponents / rotary_dim))
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, in_fp32: bool
) -> torch.Tensor:
    """Rotates ``x`` ``[B, L, H, D]`` by tables ``[B or 1, L, R]``: its first ``R <= D`` dims
    (partial RoPE passes the other ``D - R`` through).

    ``in_fp32``: rotate in fp32 and cast back (LLaDA's ``rope_full_precision``); otherwise
    the tables are cast to ``x``'s dtype and the rotation runs there (Dream, LLaDA2 and
    LLaDA-MoE, as Qwen2 does).
    """
    rotary = cos.shape[-1]
    if rotary < x.shape[-1]:
        rotated = apply_rotary(x[..., :rotary], cos, sin, in_fp32)
        return torch.cat((rotated, x[..., rotary:]), dim=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    if in_fp32:
        x32 = x.float()
        return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + _rotate_half(x) * sin


@dataclass
class AttentionInputs:
    """What every layer's self-attention needs in one forward call.

    ``cos``/``sin`` are the rotary tables of the query positions; ``key_valid`` masks the keys
    attended to (all of the sequence, or the cache's ``[0, length)``); with a ``cache``, the
    layer writes its fresh keys/values at ``start`` (a position, or the slice's slots as an
    ``int64[L]`` device tensor) and attends to the cached ones. ``block_length`` makes the
    attention block-causal (``mosa_kernels.attention``): the queries are the last positions of
    the keys attended to.
    """

    cos: torch.Tensor
    sin: torch.Tensor
    rope_in_fp32: bool
    key_valid: torch.Tensor | None
    cache: KVCache | None
    start: int | torch.Tensor
    block_length: int | None = None


def self_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    inputs: AttentionInputs,
    layer: int,
    heads: int,
    kv_heads: int,
    *,
    q_norm: nn.Module | None = None,
    k_norm: nn.Module | None = None,
    clip: float | None = None,
) -> torch.Tensor:
    """Attention of projected ``q, k, v`` (``[B, L, H*D]``) -> ``[B, L, Hq*D]``: bidirectional,
    or block-causal with ``inputs.block_length``.

    ``q_norm`` / ``k_norm``: per-head norms over the head dim (QK-norm, LLaDA2 and LLaDA-MoE),
    applied before RoPE; ``clip``: q, k and v clamped to ``[-clip, clip]`` after them
    (LLaDA-MoE's ``clip_qkv``).
    """
    batch, length, width = q.shape
    head_dim = width // heads
    q = q.view(batch, length, heads, head_dim)
    k = k.view(batch, length, kv_heads, head_dim)
    v = v.view(batch, length, kv_heads, head_dim)
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    if clip is not None:
        q, k, v = (t.clamp(-clip, clip) for t in (q, k, v))
    q = apply_rotary(q, inputs.cos, inputs.sin, inputs.rope_in_fp32)
    k = apply_rotary(k, inputs.cos, inputs.sin, inputs.rope_in_fp32)
    if inputs.cache is not None:
        k, v = inputs.cache.store(layer, inputs.start, k, v)
    out = attention(
        q, k, v, inputs.key_valid, scale=head_dim**-0.5, block_length=inputs.block_length
    )
    return out.reshape(batch, length, width)


def logical_positions(
    key_valid: torch.Tensor | None, length: int, device: torch.device
) -> torch.Tensor:
    """``cumsum(valid) - 1`` per row, padding slots 1 (``[B, length]``; without padding the
    index, ``[1, length]``): the rotary position of a token is the number of real tokens
    before it, so a left-padded row is rotated as the row alone (Dream's published
    ``tok_idx``; LLaDA2 in mosa)."""
    if key_valid is None:
        return torch.arange(length, device=device)[None]
    positions = key_valid.long().cumsum(-1) - 1
    return positions.masked_fill(~key_valid, 1)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``: the gated MLP of every family (LLaDA ``ff_proj`` is the gate)."""
    return F.silu(gate) * up

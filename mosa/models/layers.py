"""Building blocks both families share: RMSNorm, rotary embeddings, self-attention."""

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
    positions: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``cos, sin`` of shape ``[*positions.shape, head_dim]`` (half-split layout)."""
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = 1.0 / (theta ** (exponents / head_dim))
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, in_fp32: bool
) -> torch.Tensor:
    """Rotates ``x`` ``[B, L, H, D]`` by tables ``[B or 1, L, D]``.

    ``in_fp32``: rotate in fp32 and cast back (LLaDA's ``rope_full_precision``); otherwise
    the tables are cast to ``x``'s dtype and the rotation runs there (Dream, as Qwen2 does).
    """
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
) -> torch.Tensor:
    """Bidirectional attention of projected ``q, k, v`` (``[B, L, H*D]``) -> ``[B, L, Hq*D]``."""
    batch, length, width = q.shape
    head_dim = width // heads
    q = apply_rotary(
        q.view(batch, length, heads, head_dim), inputs.cos, inputs.sin, inputs.rope_in_fp32
    )
    k = apply_rotary(
        k.view(batch, length, kv_heads, head_dim), inputs.cos, inputs.sin, inputs.rope_in_fp32
    )
    v = v.view(batch, length, kv_heads, head_dim)
    if inputs.cache is not None:
        k, v = inputs.cache.store(layer, inputs.start, k, v)
    out = attention(
        q, k, v, inputs.key_valid, scale=head_dim**-0.5, block_length=inputs.block_length
    )
    return out.reshape(batch, length, width)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``: the gated MLP of both families (LLaDA ``ff_proj`` is the gate)."""
    return F.silu(gate) * up

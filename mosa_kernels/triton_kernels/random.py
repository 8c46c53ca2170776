"""The counter-based generator of ``mosa_kernels.random`` in Triton (uint32 arithmetic)."""

import triton
import triton.language as tl


@triton.jit
def hash32(x):
    """lowbias32 of a uint32 tensor (multiplications wrap mod 2**32)."""
    x = x ^ (x >> 16)
    x = x * 0x21F0AAAD
    x = x ^ (x >> 15)
    x = x * 0x735A2D97
    return x ^ (x >> 15)


@triton.jit
def uniform(row_key, cols):
    """Uniform(0, 1) float32 for ``row_key = hash32(hash32(seed) ^ row)`` and uint32 ``cols``."""
    h = hash32(row_key ^ cols)
    return ((h >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)

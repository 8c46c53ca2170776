"""Counter-based random numbers shared bit-for-bit by every backend.

A uniform draw is a pure function of ``(seed, row, column)``: no generator state is carried
between calls, so a sampled token does not depend on the backend, the vocabulary chunking,
or the order rows are processed in. The hash is Chris Wellons' ``lowbias32`` (two 32-bit
multiply/xor-shift rounds), chained over seed, row and column. Values are
``((h >> 9) + 0.5) / 2**23``: strictly inside (0, 1) and exact in float32 (24 significant
bits), so float32 backends see the very same numbers as this float64 spec.

This module is the spec; ``triton_kernels/random.py`` and ``csrc/random.h`` repeat it.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
HASH_MUL_1 = 0x21F0AAAD
HASH_MUL_2 = 0x735A2D97
# Column id of the per-row draw behind confidence='random'; real columns are < 2**31.
RANDOM_CONFIDENCE_COLUMN = 0xFFFFFFFF


def _mul32(x: torch.Tensor | int, c: int) -> torch.Tensor | int:
    # (x * c) mod 2**32 in int64 without overflow: split x into 16-bit halves.
    low = (x & 0xFFFF) * c
    high = (((x >> 16) * c) & 0xFFFF) << 16
    return (low + high) & _MASK32


def hash32(x: torch.Tensor | int) -> torch.Tensor | int:
    """lowbias32 on int64 tensors holding uint32 values, or on a Python int."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, HASH_MUL_1)
    x = x ^ (x >> 15)
    x = _mul32(x, HASH_MUL_2)
    return x ^ (x >> 15)


def uniform(seed: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Uniform(0, 1) draws for broadcast ``rows`` x ``cols`` (int64), as float64."""
    key = hash32(torch.tensor(seed & _MASK32, dtype=torch.int64, device=rows.device))
    h = hash32(hash32(key ^ rows) ^ cols)
    return ((h >> 9).double() + 0.5) / 2.0**23


def gumbel(seed: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log u)`` for the same counters, as float64."""
    return -torch.log(-torch.log(uniform(seed, rows, cols)))


def check_generator(generator) -> None:
    """``generator`` must be None or a ``torch.Generator`` (an int seed goes to ``seed=``)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {generator!r}; "
            "for an int seed use torch.Generator().manual_seed(seed)"
        )


def seed_from(generator: torch.Generator | None) -> int:
    """A 32-bit seed drawn from a CPU ``generator`` (or torch's default CPU generator)."""
    check_generator(generator)
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            "generator must be a CPU torch.Generator (the seed is drawn on the host so that "
            "no device synchronisation happens); pass torch.Generator().manual_seed(s)"
        )
    return int(torch.randint(0, 2**32, (1,), generator=generator, dtype=torch.int64))


SEED_MIX = 1_000_003  # an odd prime: distinct (seed, parts) keep distinct seeds in practice


def derive_seed(seed: int, *parts: int) -> int:
    """A seed of its own for ``parts`` (an epoch, a block and repair round, ...) under
    ``seed``: ``seed * SEED_MIX + part`` folded over ``parts``, reduced below ``2**63`` so that
    ``torch.Generator.manual_seed`` takes it."""
    for part in parts:
        seed = seed * SEED_MIX + part
    return seed % 2**63

"""The least time a LLaDA generation can take on a card: bytes and FLOPs counted from the config.

A step reads every trunk and head weight once (the embedding only at the rows it looks up) and,
in a cached mode, the cached keys and values of every layer; it does the matmul FLOPs of the
positions it runs through the trunk (their attention against every key of the sequence) and of
the head on the block's still-masked positions. Its floor is the larger of bytes / copy
bandwidth and FLOPs / matmul peak; a generation's floor is the sum over its steps. Activation
traffic, norms, RoPE, softmax and selection are left out, so no implementation can beat the
floor: ``% of roofline`` = floor time / measured time.

Steps, as ``mosa.generate`` runs them (prompt P, response G in blocks of b, L = P + G):

- no cache (and LLaDA's reference loop, the same algorithm): every step runs all L positions.
- ``prefix``: a block's first step runs all L positions and refills the cache; the others run
  the block and everything right of it, and read the cached keys left of it.
- ``dual``: a block's first step as ``prefix``; the others run the block's b positions and read
  the L - b cached ones.

A block of s steps commits b / s positions a step, so step i heads b - i·b/s masked positions.
Threshold and factor modes take as many steps as they need: their floor uses the steps the run
took, spread evenly over the blocks, and the no-op steps it launched on full blocks (a no-op
step reads every weight too).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from benchmarks.common import median_seconds

CACHE_MODES = (None, "prefix", "dual")


@dataclass(frozen=True)
class ModelShape:
    """The sizes the counts need, from a LLaDA config (``model.config``)."""

    layers: int
    d: int
    q_width: int  # query heads x head dim
    kv_width: int  # key/value heads x head dim
    mlp_hidden: int
    vocab: int
    qkv_bias: bool = False

    @classmethod
    def of(cls, config) -> ModelShape:
        return cls(
            layers=config.n_layers,
            d=config.d_model,
            q_width=config.n_heads * config.head_dim,
            kv_width=config.kv_heads * config.head_dim,
            mlp_hidden=config.mlp_hidden,
            vocab=config.logits_size,
            qkv_bias=config.qkv_bias,
        )

    @property
    def layer_matmul_parameters(self) -> int:
        """One block's projection weights: q, k, v, out; gate, up, down."""
        attention = 2 * self.d * self.q_width + 2 * self.d * self.kv_width
        return attention + 3 * self.d * self.mlp_hidden

    @property
    def trunk_parameters(self) -> int:
        """Every block's weights (projections, their biases, two RMSNorms) and the final norm."""
        bias = self.q_width + 2 * self.kv_width if self.qkv_bias else 0
        return self.layers * (self.layer_matmul_parameters + bias + 2 * self.d) + self.d


@dataclass(frozen=True)
class Step:
    """One step of every row: ``queries`` positions run through the trunk, each attending to
    ``keys`` positions, ``cached`` of whose keys and values are read from the cache, and
    ``headed`` positions through the head."""

    queries: int
    keys: int
    cached: int
    headed: float


def step_bytes(shape: ModelShape, step: Step, batch: int, dtype_bytes: int) -> float:
    """Bytes a step must read: the weights once, the looked-up embedding rows, the cached K/V."""
    weights = shape.trunk_parameters + shape.vocab * shape.d
    embedding_rows = batch * step.queries * shape.d
    cache = batch * step.cached * shape.layers * 2 * shape.kv_width
    return dtype_bytes * (weights + embedding_rows + cache)


def step_flops(shape: ModelShape, step: Step, batch: int) -> float:
    """Matmul FLOPs of a step: projections, attention (QK^T and PV) and the head."""
    projections = 2 * step.queries * shape.layers * shape.layer_matmul_parameters
    attention = 4 * step.queries * step.keys * shape.q_width * shape.layers
    head = 2 * step.headed * shape.d * shape.vocab
    return batch * (projections + attention + head)


def generation_steps(
    cache: str | None,
    *,
    prompt_length: int,
    gen_length: int,
    block_length: int,
    steps: int,
    no_op_steps: int = 0,
) -> list[Step]:
    """Every step of one generation, as ``mosa.generate`` runs it in ``cache`` mode; ``steps``
    is the total (for threshold/factor modes, the number the run took). ``no_op_steps``:
    steps a threshold/factor run launched on an already full block (the block-done flag read
    a step late), spread evenly over the blocks: each reads the weights, heads nothing."""
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not a multiple of block {block_length}")
    blocks = gen_length // block_length
    if steps < blocks:
        raise ValueError(f"steps ({steps}) must be at least the number of blocks ({blocks})")
    length = prompt_length + gen_length
    full = dict(queries=length, keys=length, cached=0)
    out = []
    for block in range(blocks):
        start = prompt_length + block * block_length
        block_steps = steps // blocks + (block < steps % blocks)
        idle = no_op_steps // blocks + (block < no_op_steps % blocks)
        per_step = block_length / block_steps
        for i in range(block_steps + idle):
            headed = max(0.0, block_length - i * per_step)
            if cache is None or i == 0:
                out.append(Step(**full, headed=headed))
            elif cache == "prefix":
                out.append(Step(length - start, length, start, headed))
            else:
                out.append(Step(block_length, length, length - block_length, headed))
    return out


@dataclass(frozen=True)
class Peaks:
    """What the card does at best: copy bandwidth (bytes read + written a second) and matmul
    FLOP/s in the model's dtype."""

    bandwidth: float
    matmul_flops: float


def floor_seconds(
    shape: ModelShape, steps: list[Step], *, batch: int, dtype_bytes: int, peaks: Peaks
) -> float:
    """The generation's floor: each step bound by its bytes or its FLOPs, whichever is slower."""
    return sum(
        max(
            step_bytes(shape, step, batch, dtype_bytes) / peaks.bandwidth,
            step_flops(shape, step, batch) / peaks.matmul_flops,
        )
        for step in steps
    )


def measure_peaks(
    device: torch.device,
    dtype: torch.dtype,
    *,
    copy_bytes: int = 1 << 30,
    matmul_size: int = 8192,
    repeats: int = 5,
) -> Peaks:
    """The card's copy bandwidth (a device-to-device copy of a ``copy_bytes`` buffer, read and
    written) and matmul rate (a square ``matmul_size`` matmul in ``dtype``), median of
    ``repeats``."""
    source = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    target = torch.empty_like(source)
    copy_s = median_seconds(functools.partial(target.copy_, source), device, repeats)
    del source, target
    return Peaks(
        bandwidth=2 * copy_bytes / copy_s,
        matmul_flops=matmul_flops(device, dtype, size=matmul_size, repeats=repeats),
    )


def matmul_flops(device: torch.device, dtype: torch.dtype, *, size: int, repeats: int) -> float:
    """FLOP/s of a square ``size`` matmul in ``dtype`` on ``device``, median of ``repeats``."""
    a = torch.randn(size, size, device=device).to(dtype)
    return 2 * size**3 / median_seconds(functools.partial(torch.mm, a, a.T), device, repeats)

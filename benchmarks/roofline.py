"""The least time a LLaDA or LLaDA2 generation can take on a card: bytes and FLOPs counted from
the config.

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

LLaDA2 (block diffusion, ``block_diffusion_steps``): blocks of b counted from position 0,
decoding from the block holding the prompt's end; attention is block-causal, so a query of
block j attends to the (j + 1)·b keys up to its block's end.

- no cache (and the published loop): a step of block j runs the window [0, end) of its
  (j + 1) blocks, (end + b) / 2 keys a query on average.
- ``prefix``: the first decoded block's first step runs its window and fills the cache; the
  first step of every later block runs the block before it (with its committed tokens, which
  writes their keys and values) and itself, 2b queries; its other steps run the block's b
  positions against the cached prefix.

An MoE layer's step reads its attention, router and shared-expert weights, and of the routed
experts only those the step's T = batch x queries tokens select: under uniform routing (each
token picks k of the E experts at random; the group-limited routing of LLaDA2 is treated as
uniform) E·(1 - (1 - k/E)^T) distinct experts on average, each 3·d·I weights. Its FLOPs are
those of the active parameters: k experts and the shared one per token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from benchmarks.common import median_seconds
from mosa.models import LLaDA2Config

CACHE_MODES = (None, "prefix", "dual")


@dataclass(frozen=True)
class ModelShape:
    """The sizes the counts need, from a LLaDA or LLaDA2 config (``model.config``). The last
    ``moe_layers`` of the ``layers`` are MoE layers (``experts`` routed experts of width
    ``expert_hidden``, ``top_k`` a token, a router, a shared expert of width
    ``shared_hidden``); the others have a dense MLP of width ``mlp_hidden``."""

    layers: int
    d: int
    q_width: int  # query heads x head dim
    kv_width: int  # key/value heads x head dim
    mlp_hidden: int
    vocab: int
    qkv_bias: bool = False
    out_bias: bool = False
    qk_norm_width: int = 0  # per-head q and k RMSNorms: head dim each, 0 without them
    moe_layers: int = 0
    experts: int = 0
    top_k: int = 0
    expert_hidden: int = 0
    shared_hidden: int = 0

    @classmethod
    def of(cls, config) -> ModelShape:
        if isinstance(config, LLaDA2Config):
            return cls._of_llada2(config)
        return cls(
            layers=config.n_layers,
            d=config.d_model,
            q_width=config.n_heads * config.head_dim,
            kv_width=config.kv_heads * config.head_dim,
            mlp_hidden=config.mlp_hidden,
            vocab=config.logits_size,
            qkv_bias=config.qkv_bias,
        )

    @classmethod
    def _of_llada2(cls, config: LLaDA2Config) -> ModelShape:
        layers = config.num_hidden_layers
        moe_layers = sum(config.is_moe_layer(i) for i in range(layers))
        moe = moe_layers > 0
        return cls(
            layers=layers,
            d=config.hidden_size,
            q_width=config.num_attention_heads * config.head_dim,
            kv_width=config.kv_heads * config.head_dim,
            mlp_hidden=config.intermediate_size if moe_layers < layers else 0,
            vocab=config.logits_size,
            qkv_bias=config.use_qkv_bias,
            out_bias=config.use_bias,
            qk_norm_width=config.head_dim if config.use_qk_norm else 0,
            moe_layers=moe_layers,
            experts=config.num_experts if moe else 0,
            top_k=config.num_experts_per_tok if moe else 0,
            expert_hidden=config.moe_intermediate_size if moe else 0,
            shared_hidden=config.moe_intermediate_size * (config.num_shared_experts or 0)
            if moe
            else 0,
        )

    @property
    def attention_parameters(self) -> int:
        """One layer's attention projection weights: q, k, v, out."""
        return 2 * self.d * self.q_width + 2 * self.d * self.kv_width

    @property
    def layer_matmul_parameters(self) -> int:
        """One dense layer's projection weights: q, k, v, out; gate, up, down."""
        return self.attention_parameters + 3 * self.d * self.mlp_hidden

    @property
    def moe_fixed_matmul_parameters(self) -> int:
        """What every token of an MoE layer runs through: attention, router, shared expert."""
        return self.attention_parameters + self.experts * self.d + 3 * self.d * self.shared_hidden

    @property
    def expert_parameters(self) -> int:
        """One routed expert's weights: gate, up, down."""
        return 3 * self.d * self.expert_hidden

    @property
    def _layer_small_parameters(self) -> int:
        """A layer's biases and norms (two RMSNorms, the q/k norms)."""
        bias = (self.q_width + 2 * self.kv_width if self.qkv_bias else 0) + (
            self.d if self.out_bias else 0
        )
        return bias + 2 * self.d + 2 * self.qk_norm_width

    @property
    def trunk_parameters(self) -> int:
        """Every layer's weights (projections, their biases, the norms; an MoE layer's router
        and every expert) and the final norm."""
        return self.touched_parameters(tokens=None)

    def expected_experts(self, tokens: int) -> float:
        """Distinct routed experts ``tokens`` tokens select in one MoE layer, on average under
        uniform routing: E·(1 - (1 - k/E)^T)."""
        if not self.experts:
            return 0.0
        return self.experts * (1 - (1 - self.top_k / self.experts) ** tokens)

    def touched_parameters(self, tokens: int | None) -> float:
        """The trunk weights a pass of ``tokens`` tokens reads (None: every expert)."""
        dense = self.layers - self.moe_layers
        experts = self.experts if tokens is None else self.expected_experts(tokens)
        moe = self.moe_fixed_matmul_parameters + experts * self.expert_parameters
        return (
            dense * self.layer_matmul_parameters
            + self.moe_layers * moe
            + self.layers * self._layer_small_parameters
            + self.d
        )

    @property
    def active_matmul_parameters(self) -> int:
        """The projection weights one token runs through, over all layers (MoE: its top-k
        experts and the shared one)."""
        dense = self.layers - self.moe_layers
        moe = self.moe_fixed_matmul_parameters + self.top_k * self.expert_parameters
        return dense * self.layer_matmul_parameters + self.moe_layers * moe


@dataclass(frozen=True)
class Step:
    """One step of every row: ``queries`` positions run through the trunk, each attending to
    ``keys`` positions (on average, under block-causal attention), ``cached`` of whose keys and
    values are read from the cache, and ``headed`` positions through the head."""

    queries: int
    keys: float
    cached: int
    headed: float


def step_bytes(shape: ModelShape, step: Step, batch: int, dtype_bytes: int) -> float:
    """Bytes a step must read: the weights once (an MoE layer's routed experts: those the
    step's tokens select), the looked-up embedding rows, the cached K/V."""
    weights = shape.touched_parameters(batch * step.queries) + shape.vocab * shape.d
    embedding_rows = batch * step.queries * shape.d
    cache = batch * step.cached * shape.layers * 2 * shape.kv_width
    return dtype_bytes * (weights + embedding_rows + cache)


def step_flops(shape: ModelShape, step: Step, batch: int) -> float:
    """Matmul FLOPs of a step: projections, attention (QK^T and PV) and the head."""
    projections = 2 * step.queries * shape.active_matmul_parameters
    attention = 4 * step.queries * step.keys * shape.q_width * shape.layers
    head = 2 * step.headed * shape.d * shape.vocab
    return batch * (projections + attention + head)


def _share(total: int, blocks: int, block: int) -> int:
    """Block ``block``'s part of ``total`` steps spread evenly over ``blocks`` blocks, the
    first ``total % blocks`` taking one more."""
    return total // blocks + (block < total % blocks)


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
        block_steps, idle = (_share(total, blocks, block) for total in (steps, no_op_steps))
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


BLOCK_CACHE_MODES = (None, "prefix")


def decoded_blocks(prompt_length: int, gen_length: int, block_length: int) -> int:
    """Blocks a block-diffusion generation decodes: from the one holding the prompt's end to
    the one holding the response's end (blocks counted from position 0)."""
    return -(-(prompt_length + gen_length) // block_length) - prompt_length // block_length


def block_diffusion_steps(
    cache: str | None,
    *,
    prompt_length: int,
    gen_length: int,
    block_length: int,
    steps: int,
    no_op_steps: int = 0,
) -> list[Step]:
    """Every step of one LLaDA2 generation (module docstring), as ``block_generate`` (or,
    with ``cache=None``, the published loop) runs it; ``steps`` is the total the run took,
    spread evenly over the decoded blocks, and ``no_op_steps`` the steps it launched on an
    already full block (each as the block's later steps, heading nothing). A block's masked
    positions (the first block's right of the prompt) are taken to be committed evenly over
    its steps."""
    if cache not in BLOCK_CACHE_MODES:
        raise ValueError(f"cache must be one of {BLOCK_CACHE_MODES}, got {cache!r}")
    b = block_length
    first = prompt_length // b
    blocks = decoded_blocks(prompt_length, gen_length, b)
    if steps < blocks:
        raise ValueError(f"steps ({steps}) must be at least the number of blocks ({blocks})")
    out = []
    for index in range(blocks):
        start = (first + index) * b
        end = start + b
        masked = end - max(start, prompt_length)
        block_steps, idle = (_share(total, blocks, index) for total in (steps, no_op_steps))
        for i in range(block_steps + idle):
            headed = max(0.0, masked * (1 - i / block_steps))
            if cache is None or (i == 0 and index == 0):
                out.append(Step(end, (end + b) / 2, 0, headed))
            elif i == 0:  # the block before (its commits' keys and values) and this one
                out.append(Step(2 * b, (start + end) / 2, start - b, headed))
            else:
                out.append(Step(b, end, start, headed))
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

"""One denoising step of ``generate``, written so that one CUDA graph serves every block.

A step reads where its window is (``StepState.window_start``), how many positions to commit
(``k_table`` at ``step_in_block``) and the step count from tensors, and writes the canvas and
the trace in place. Only the window's width and the number of positions a cached step runs are
frozen into a step (``StepShape``): with a dual cache or none, every block of a generation,
and every later call of the same shape, replays the same two graphs (the block's refresh and
its other steps); a prefix-cached step's run shrinks block by block, so it has one per block.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mosa_kernels import select_transfer
from mosa_kernels.ops.select_transfer import select_scheduled
from mosa_kernels.random import seed_from

from .cuda_graph import GraphedStep
from .graph_sets import GraphCache, tensor_memory
from .nonfinite import keep_masked_where_nonfinite
from .predictor import Predictor, window_positions


@dataclass
class StepState:
    """The tensors a set of steps reads and writes in place (``B`` rows of length ``L``).

    Attributes:
        x: ``int64[B, L]``, the canvas. key_valid: ``bool[B, L]`` (padding False) or None.
        given: ``bool[B, L]``, ``x != mask_id`` when sampling began (what CFG hides).
        trace: ``int64[B, L]``, the step each position was committed at, -1 where no step did.
        window_start: 0-d, the window's first position. k_table: ``int64[B, S]``, a
            fixed-schedule block's commits per step (None for parallel decoding);
            step_in_block: 0-d, the column of ``k_table`` the next step reads.
        count: 0-d, steps run in the whole generation. done: 0-d bool, no masked position
            is left in the window (parallel decoding).
        nonfinite: ``bool[B]``, a row had NaN/inf logits at a masked position (``nonfinite``).
    """

    x: torch.Tensor
    key_valid: torch.Tensor | None
    given: torch.Tensor
    trace: torch.Tensor
    window_start: torch.Tensor
    k_table: torch.Tensor | None
    step_in_block: torch.Tensor
    count: torch.Tensor
    done: torch.Tensor
    nonfinite: torch.Tensor

    @classmethod
    def allocate(
        cls, rows: int, length: int, device, padded: bool, steps_per_block: int | None
    ) -> StepState:
        def scalar(dtype=torch.long):
            return torch.zeros((), dtype=dtype, device=device)

        return cls(
            x=torch.empty(rows, length, dtype=torch.long, device=device),
            key_valid=torch.empty(rows, length, dtype=torch.bool, device=device)
            if padded
            else None,
            given=torch.empty(rows, length, dtype=torch.bool, device=device),
            trace=torch.empty(rows, length, dtype=torch.long, device=device),
            window_start=scalar(),
            k_table=(
                None
                if steps_per_block is None
                else torch.empty(rows, steps_per_block, dtype=torch.long, device=device)
            ),
            step_in_block=scalar(),
            count=scalar(),
            done=scalar(torch.bool),
            nonfinite=torch.zeros(rows, dtype=torch.bool, device=device),
        )


@dataclass(frozen=True)
class StepShape:
    """What a step freezes: whether it refreshes (reruns the whole sequence and refills the
    cache), its window's width, and how many positions a cached step runs (None otherwise)."""

    refresh: bool
    width: int
    run_length: int | None


@dataclass
class BlockStep:
    """One step of the shape ``shape`` over ``state``. Parallel decoding commits by
    ``threshold`` or ``factor`` (``select_transfer``'s rules); with neither, the fixed
    schedule commits ``state.k_table``'s count for the step.

    ``rank``, when given, replaces the confidence the commits are chosen by: it gets the
    confidence and the window's positions (``int64[B, W]``) and returns the score
    (DiffuGuard's annealed ranking). Eager steps only: it may read the host.
    """

    state: StepState
    shape: StepShape
    predictor: Predictor
    sample: Callable
    threshold: float | None
    factor: float | None
    mask_id: int
    check_ids: Callable[[int], None]
    generator: torch.Generator | None
    rank: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    @property
    def parallel(self) -> bool:
        return self.threshold is not None or self.factor is not None

    def __call__(self, narrow: int | None = None) -> None:
        """``narrow``, when given, samples each row's first ``narrow`` masked positions only
        (see ``_sample_masked``); eager steps only, it changes the kernels' shapes."""
        state, shape = self.state, self.shape
        index = window_positions(state.window_start, shape.width, state.x.device)
        index = index.expand(state.x.shape[0], -1)
        current = state.x.gather(1, index)
        is_masked = current == self.mask_id
        rows, rows_uncond = self.predictor.rows(
            state.x, state.key_valid, state.given, state.window_start, shape.width,
            refresh=shape.refresh, run_length=shape.run_length,
        )  # fmt: skip
        if shape.refresh:
            self.check_ids(self.predictor.vocab_size(rows))
        sample = functools.partial(
            self.sample, seed=seed_from(self.generator) if self.generator is not None else 0
        )
        if narrow is None:
            token, conf = sample(rows, x_uncond=rows_uncond)
        else:
            token, conf = _sample_masked(sample, rows, rows_uncond, is_masked, narrow)
        token = keep_masked_where_nonfinite(token, is_masked, state.nonfinite, self.mask_id)
        if self.rank is not None:
            conf = self.rank(conf, index)
        if self.parallel:
            commit = select_transfer(conf, is_masked, threshold=self.threshold, factor=self.factor)
        else:
            column = state.step_in_block.view(1, 1).expand(state.x.shape[0], 1)
            commit = select_scheduled(conf, is_masked, state.k_table.gather(1, column)[:, 0])
        state.x.scatter_(1, index, torch.where(commit, token, current))
        filled = commit & (token != self.mask_id)
        state.trace.scatter_(
            1, index, torch.where(filled, state.count, state.trace.gather(1, index))
        )
        if self.parallel:
            # A step that finds its window full is a no-op and not counted: the host learns
            # that a block is done a step late (``BlockDone``) rather than waiting every step.
            state.count += is_masked.any()
            state.done.copy_((state.x.gather(1, index) != self.mask_id).all())
        else:
            state.count += 1
            state.step_in_block += 1


class StepSet:
    """The steps of one generation's settings at one batch shape, over one ``StepState``.

    With ``graphs``, each step shape runs eagerly once (which compiles and tunes its kernels)
    and is then captured as a CUDA graph and replayed (``GraphedStep``); ``graph_cache``
    counts the captures. All graphs of a set share one memory pool, made with the set and
    freed with it: a pool must not outlive the last graph captured in it and then take a new
    capture (PyTorch's allocator asserts on that).
    """

    def __init__(
        self,
        state: StepState,
        predictor: Predictor,
        step_options: dict,
        graphs: bool,
        graph_cache: GraphCache | None = None,
    ):
        """``step_options``: the ``BlockStep`` fields other than state, shape and predictor."""
        self.state = state
        self.predictor = predictor
        self.step_options = step_options
        self.graphs = graphs
        self.graph_cache = graph_cache
        self.pool = torch.cuda.graph_pool_handle() if graphs else None
        self.steps: dict[StepShape, BlockStep] = {}
        self.graphed: dict[StepShape, GraphedStep] = {}

    @property
    def device(self) -> torch.device:
        return self.state.x.device

    @property
    def kv_cache(self):
        """The predictor's KV cache (None before the first refresh, or without a cache)."""
        return self.predictor.kv_cache

    def memory(self) -> dict:
        """What the set holds (see ``GraphCache``): its state, KV cache and graph pool."""
        cache = self.kv_cache
        tensors = [value for value in vars(self.state).values() if isinstance(value, torch.Tensor)]
        if cache is not None:
            tensors += [*cache.keys, *cache.values, cache.key_valid, cache.position_ids]
        memory = tensor_memory(tensors)
        memory[("pool", id(self))] = sum(step.pool_bytes for step in self.graphed.values())
        return memory

    def run(self, shape: StepShape, narrow: int | None = None) -> None:
        step = self.steps.get(shape)
        if step is None:
            step = self.steps[shape] = BlockStep(
                self.state, shape, self.predictor, **self.step_options
            )
        if not self.graphs:
            step(narrow)
            return
        graphed = self.graphed.get(shape)
        if graphed is None:
            graphed = self.graphed[shape] = GraphedStep(
                step, self.device, self.pool, self.graph_cache
            )
        graphed()


@dataclass
class BlockDoneSetting:
    """Internal: how ``BlockDone`` reads the flag, and what that cost, so that
    ``benchmarks/sampler.py`` can measure both lags (not a user setting).

    Attributes:
        lag: None for ``BlockDone.default_lag``; 0 waits for each step's flag, 1 reads it a step
            late.
        no_op_steps: steps launched after their block was already full (each reads every
            weight, like a real step), counted over the process.
    """

    lag: int | None = None
    no_op_steps: int = 0


BLOCK_DONE = BlockDoneSetting()


class BlockDone:
    """Tells the host when a parallel-decoding block has no masked position left, from
    ``StepState.done``.

    On a GPU it reads the flag one step late by default: after launching step i it waits for
    step i - 1 (finished or nearly, while step i runs) instead of stalling on step i, so the GPU
    never idles for the read; the price is one no-op step per block (``BLOCK_DONE`` counts
    them). On the CPU reads are free.
    """

    def __init__(self, flag: torch.Tensor):
        self.flag = flag
        self.lag = self.default_lag(flag) if BLOCK_DONE.lag is None else BLOCK_DONE.lag
        if self.lag not in (0, 1):
            raise ValueError(f"BLOCK_DONE.lag must be None, 0 or 1, got {self.lag!r}")
        pinned = flag.is_cuda
        self.copies = [torch.empty((), dtype=torch.bool, pin_memory=pinned) for _ in range(2)]
        self.events = [torch.cuda.Event() if pinned else None for _ in range(2)]

    @staticmethod
    def default_lag(flag: torch.Tensor) -> int:
        # Not yet decided by measurement: at 8B shapes a no-op step costs >= 5 ms against the
        # ~30-50 us a wait on each step's flag might cost the host. The choice per mode and
        # batch awaits benchmarks/sampler.py on a GPU (its rows at lag 0 and 1, issue 29).
        return 1 if flag.is_cuda else 0

    def after_step(self, i: int) -> bool:
        """Call after launching step ``i`` of the block; True once the block is known full."""
        if self.lag == 0:
            return bool(self.flag)
        slot = i % 2
        self.copies[slot].copy_(self.flag, non_blocking=True)
        if self.events[slot] is not None:
            # The copy runs on the flag's device's stream, which need not be the current one.
            self.events[slot].record(torch.cuda.current_stream(self.flag.device))
        if i == 0:
            return False
        previous = (i - 1) % 2
        if self.events[previous] is not None:
            self.events[previous].synchronize()
        full = bool(self.copies[previous])
        BLOCK_DONE.no_op_steps += full  # step i ran on the block step i - 1 had filled
        return full


def _sample_masked(sample, rows, rows_uncond, is_masked, width: int):
    """``sample`` on each row's masked positions only (committed ones need no logits: the head
    is most of a cached step); unsampled positions get confidence -inf.

    Deterministic choice only: sampling noise is keyed by the row's place in the window."""
    batch, window = is_masked.shape
    token = torch.zeros(batch, window, dtype=torch.long, device=rows.device)
    conf = torch.full((batch, window), float("-inf"), device=rows.device)
    if width == 0:
        return token, conf
    # Masked positions first, in order; rows with fewer take some committed ones as filler.
    places = torch.argsort((~is_masked).to(torch.int8), dim=1, stable=True)[:, :width]

    def take(states):
        return states.gather(1, places[..., None].expand(-1, -1, states.shape[-1]))

    picked_token, picked_conf = sample(
        take(rows), x_uncond=None if rows_uncond is None else take(rows_uncond)
    )
    return token.scatter(1, places, picked_token), conf.scatter(1, places, picked_conf.float())

"""One step of ``block_generate`` over a whole batch, written so that a CUDA graph can replay it.

A step decodes one block of the aligned canvas (``block_canvas``): it runs the model up to the
block's end under block-causal attention, samples every position of the block in one fused
vocabulary pass, and commits by LLaDA2.0's rule (threshold, else the schedule's count) or
LLaDA2.1's (threshold, else ``num_to_transfer``, plus token editing). Whether each row still
runs, how many steps it ran and whether the block is done live in tensors
(``BlockDiffusionState``), so the host reads nothing inside a step; only the block (its slots)
and the slots the model runs are frozen into one (``BlockStepShape``).

With ``cache='prefix'`` the keys and values of finished blocks are kept: a step runs its block
alone against them, and the first step of a block runs the block before it too, with the
tokens that block committed, which writes its final keys and values. Under block-causal
attention that block attends to itself and to what precedes it only, so the cache is exact.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mosa.models import KVCache
from mosa_kernels import sample_tokens
from mosa_kernels.random import seed_from

from .block_rules import confirmed_eos, edits, response_holds_eos, threshold_or_top_k
from .block_settings import BlockSettings
from .cuda_graph import GraphedStep
from .filters import top_k_filter, top_p_filter
from .graph_sets import tensor_memory
from .nonfinite import keep_masked_where_nonfinite


@dataclass
class BlockDiffusionState:
    """The tensors a set of steps reads and writes in place (``B`` rows of ``L`` slots).

    Attributes:
        x: ``int64[B, L]``, the aligned canvas. key_valid: ``bool[B, L]`` or None.
        given: ``bool[B, L]``, the prompt, padding and fixed response tokens (never
            committed or edited).
        trace: ``int64[B, L]``, the row's step each position was last written at, -1 where
            none wrote it.
        row_start, response_start: ``int64[B]``, each row's first prompt / response slot.
        end_blocks: ``int64[B]``, one past each row's last block.
        live: ``bool[B]``, the row decodes the current block. stopped: ``bool[B]``, the row
            ended at an EOS; prompt_eos: it did so at an EOS of its prompt
            (``eos_early_stop``), which leaves its response empty.
        done: ``bool[B]``, the row's loop over the block ended (LLaDA2.1). post_steps:
            ``int64[B]``, its steps since the block was filled (LLaDA2.1).
        row_steps: ``int64[B]``, steps the row ran (its own count, as if it ran alone).
        step_in_block: 0-d, the schedule's column the next step reads; schedule: ``int64[S]``
            (LLaDA2.0's counts per step) or None.
        block_done: 0-d bool, no row runs another step in this block.
        count: 0-d, steps in which some row ran.
        nonfinite: ``bool[B]``, a row had NaN/inf logits at a masked position.
    """

    x: torch.Tensor
    key_valid: torch.Tensor | None
    given: torch.Tensor
    trace: torch.Tensor
    row_start: torch.Tensor
    response_start: torch.Tensor
    end_blocks: torch.Tensor
    live: torch.Tensor
    stopped: torch.Tensor
    prompt_eos: torch.Tensor
    done: torch.Tensor
    post_steps: torch.Tensor
    row_steps: torch.Tensor
    step_in_block: torch.Tensor
    schedule: torch.Tensor | None
    block_done: torch.Tensor
    count: torch.Tensor
    nonfinite: torch.Tensor

    @classmethod
    def allocate(
        cls, rows: int, length: int, device, padded: bool, schedule_steps: int | None
    ) -> BlockDiffusionState:
        def per_row(dtype=torch.long):
            return torch.zeros(rows, dtype=dtype, device=device)

        def scalar(dtype=torch.long):
            return torch.zeros((), dtype=dtype, device=device)

        canvas = functools.partial(torch.empty, rows, length, device=device)
        return cls(
            x=canvas(dtype=torch.long),
            key_valid=canvas(dtype=torch.bool) if padded else None,
            given=canvas(dtype=torch.bool),
            trace=canvas(dtype=torch.long),
            row_start=per_row(),
            response_start=per_row(),
            end_blocks=per_row(),
            live=per_row(torch.bool),
            stopped=per_row(torch.bool),
            prompt_eos=per_row(torch.bool),
            done=per_row(torch.bool),
            post_steps=per_row(),
            row_steps=per_row(),
            step_in_block=scalar(),
            schedule=None
            if schedule_steps is None
            else torch.empty(schedule_steps, dtype=torch.long, device=device),
            block_done=scalar(torch.bool),
            count=scalar(),
            nonfinite=per_row(torch.bool),
        )

    def begin_block(self, block: int, rows: torch.Tensor | None = None) -> None:
        """Readies block ``block``: the rows it belongs to and that have not stopped run it
        (of ``rows``, ``bool[B]``, only, when given: a block decoded again)."""
        live = (self.end_blocks > block) & ~self.stopped
        self.live.copy_(live if rows is None else live & rows)
        self.done.copy_(~self.live)
        self.post_steps.zero_()
        self.step_in_block.zero_()
        self.block_done.zero_()

    def end_block(self, settings: BlockSettings, block: int) -> None:
        """After block ``block``: with ``stop_at_eos``, the rows whose response now holds an
        EOS (LLaDA2.1: and no mask) stop, as the published loop does after a block."""
        if not settings.stop_at_eos:
            return
        end = (block + 1) * settings.block_length
        mask_id = settings.mask_id if settings.editing else None
        holds = response_holds_eos(self.x[:, :end], self.response_start, settings.eos_id, mask_id)
        self.stopped |= self.live & holds


@dataclass(frozen=True)
class BlockStepShape:
    """What a step freezes: the block it decodes and the first slot the model runs (0 without
    a cache and for a cache's first fill; the block before, with its committed tokens, on a
    cached block's first step; the block itself otherwise)."""

    block: int
    run_from: int


@dataclass
class BlockDiffusionStep:
    """One step of ``shape`` over ``state`` (see the module's docstring)."""

    state: BlockDiffusionState
    shape: BlockStepShape
    model: torch.nn.Module
    cache: KVCache | None
    settings: BlockSettings
    generator: torch.Generator | None = None
    rank: object = None
    """``BlockHooks.rank`` (eager only), or None: the top-k half ranks by confidence."""

    def __call__(self) -> None:
        state, settings = self.state, self.settings
        width = settings.block_length
        start = self.shape.block * width
        end = start + width
        current = state.x[:, start:end]
        is_masked = current == settings.mask_id
        token, confidence = self._sample(self._hidden(start, end))
        token = keep_masked_where_nonfinite(token, is_masked, state.nonfinite, settings.mask_id)
        live = state.live & ~state.nonfinite
        has_masks = is_masked.any(dim=1)
        if settings.editing:
            state.post_steps += live & ~state.done & ~has_masks
            state.done |= state.post_steps > settings.max_post_steps
            runs = live & ~state.done
            k = torch.full_like(state.row_steps, settings.num_to_transfer)
        else:
            runs = live & has_masks
            k = state.schedule.index_select(0, state.step_in_block.view(1)).expand_as(runs)
        # Candidates are the running rows' masked positions: the rest commit nothing.
        rank = None
        if self.rank is not None:
            slots = torch.arange(start, end, device=current.device).expand_as(current)
            rank = self.rank(confidence, slots)
        commit = threshold_or_top_k(
            confidence, is_masked & runs[:, None], k, settings.threshold, rank
        )
        if settings.editing:
            editable = ~is_masked & ~state.given[:, start:end] & runs[:, None]
            edited = edits(token, confidence, current, editable, settings.editing_threshold)
            commit |= edited
            state.done |= runs & ~has_masks & ~edited.any(dim=1)
        written = torch.where(commit, token, current)
        filled = torch.where(token != settings.mask_id, state.row_steps[:, None], -1)
        state.trace[:, start:end] = torch.where(commit, filled, state.trace[:, start:end])
        state.x[:, start:end] = written
        state.row_steps += runs
        state.count += runs.any()
        if settings.eos_early_stop and not settings.editing:
            self._stop_at_confirmed_eos(commit & (token == settings.eos_id), runs, end)
        if settings.editing:
            running = live & ~state.done
        else:
            running = state.live & ~state.nonfinite & (written == settings.mask_id).any(dim=1)
        state.block_done.copy_(~running.any())
        state.step_in_block += 1

    def _stop_at_confirmed_eos(self, committed_eos, runs, end) -> None:
        """LLaDA2.0's ``eos_early_stop``: a row that committed an EOS whose first EOS is
        confirmed stops at once (the published ``generate`` returns there)."""
        state, settings = self.state, self.settings
        confirmed, in_prompt = confirmed_eos(
            state.x[:, :end], state.row_start, state.response_start, settings.eos_id,
            settings.mask_id,
        )  # fmt: skip
        stop = runs & committed_eos.any(dim=1) & confirmed
        state.stopped |= stop
        state.prompt_eos |= stop & in_prompt
        state.live &= ~stop

    def _hidden(self, start: int, end: int) -> torch.Tensor:
        """The model's hidden states ``[B, W, d]`` of slots ``[start, end)``, block-causal."""
        state, width = self.state, self.settings.block_length
        if self.cache is None:
            key_valid = None if state.key_valid is None else state.key_valid[:, :end]
            out = self.model(state.x[:, :end], key_valid, block_length=width)
            return out.hidden_states[:, start:]
        first = self.shape.run_from
        # Block-causal attention with a cache needs the slice to end the attended keys.
        self.cache.truncate(first)
        out = self.model(state.x[:, first:end], cache=self.cache, start=first, block_length=width)
        return out.hidden_states[:, start - first :]

    def _sample(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token and its probability (the published confidence) at every slot of the block,
        in one pass over the vocabulary (full logits only to filter them)."""
        settings = self.settings
        seed = seed_from(self.generator) if settings.temperature > 0 else 0
        if not settings.filtered:
            return sample_tokens(
                hidden, self.model.lm_head_weight, bias=self.model.lm_head_bias,
                temperature=settings.temperature, confidence="prob", tempered_confidence=True,
                seed=seed, nonfinite="mark",
            )  # fmt: skip
        logits = F.linear(hidden, self.model.lm_head_weight, self.model.lm_head_bias).float()
        logits = logits / settings.temperature
        # The published order: top-k, then top-p over what top-k kept.
        if settings.top_k is not None:
            logits = top_k_filter(logits, settings.top_k)
        if settings.top_p is not None and settings.top_p < 1:
            logits = top_p_filter(logits, settings.top_p)
        return sample_tokens(
            logits, temperature=1.0, confidence="prob", seed=seed, nonfinite="mark"
        )


def allocate_cache(model, state: BlockDiffusionState) -> KVCache:
    """An empty cache of the canvas's every slot, whose validity is the state's (so a later
    call that copies its padding into the state updates the cache too)."""
    rows, length = state.x.shape
    config = model.config
    positions = model.rotary_positions(state.key_valid, length)
    return KVCache.allocate(
        len(model.blocks), (rows, length, config.kv_heads, config.head_dim), model.dtype,
        state.key_valid, positions.clone(),
    )  # fmt: skip


class BlockStepSet:
    """The steps of one batch shape over one ``BlockDiffusionState`` (and KV cache), eager or
    replayed as CUDA graphs (``graphs``): each step shape runs eagerly once, is captured on
    its second call and replayed from then on (``GraphedStep``), in one memory pool."""

    def __init__(
        self,
        model,
        settings: BlockSettings,
        state: BlockDiffusionState,
        graphs: bool,
        graph_cache=None,
        generator: torch.Generator | None = None,
        rank=None,
    ):
        self.model, self.settings, self.state = model, settings, state
        self.graphs, self.graph_cache, self.generator = graphs, graph_cache, generator
        self.rank = rank
        self.kv_cache = None if settings.cache is None else allocate_cache(model, state)
        self.pool = torch.cuda.graph_pool_handle() if graphs else None
        self.steps: dict[BlockStepShape, BlockDiffusionStep] = {}
        self.graphed: dict[BlockStepShape, GraphedStep] = {}

    @property
    def device(self) -> torch.device:
        return self.state.x.device

    def memory(self) -> dict:
        """What the set holds (see ``GraphCache``): its state, KV cache and graph pool."""
        tensors = [value for value in vars(self.state).values() if isinstance(value, torch.Tensor)]
        cache = self.kv_cache
        if cache is not None:
            tensors += [*cache.keys, *cache.values, cache.position_ids]
        memory = tensor_memory(tensors)
        memory[("pool", id(self))] = sum(step.pool_bytes for step in self.graphed.values())
        return memory

    def refresh_positions(self) -> None:
        """After new padding was copied into the state: the cache's rotary positions."""
        if self.kv_cache is not None and self.state.key_valid is not None:
            positions = self.model.rotary_positions(self.state.key_valid, self.state.x.shape[1])
            self.kv_cache.position_ids.copy_(positions)

    def run(self, shape: BlockStepShape) -> None:
        step = self.steps.get(shape)
        if step is None:
            step = self.steps[shape] = BlockDiffusionStep(
                self.state, shape, self.model, self.kv_cache, self.settings, self.generator,
                self.rank,
            )  # fmt: skip
        if not self.graphs:
            step()
            return
        graphed = self.graphed.get(shape)
        if graphed is None:
            graphed = self.graphed[shape] = GraphedStep(
                step, self.device, self.pool, self.graph_cache
            )
        graphed()

    def shape(self, block: int, first_block: int, step: int) -> BlockStepShape:
        """The shape of step ``step`` of block ``block`` (decoding began at ``first_block``)."""
        if self.settings.cache is None:
            return BlockStepShape(block, 0)
        width = self.settings.block_length
        if step > 0:
            return BlockStepShape(block, block * width)
        if block == first_block:
            return BlockStepShape(block, 0)
        return BlockStepShape(block, (block - 1) * width)

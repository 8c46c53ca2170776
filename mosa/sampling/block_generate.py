"""``block_generate``: LLaDA2.x's block-diffusion sampler, token for token, for batches too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mosa.models import DiffusionLM, adopt_model
from mosa.models.families import family_of
from mosa.text.canvas import build_canvas
from mosa_kernels.random import check_generator

from .arguments import check_sampler_arguments
from .block_canvas import BlockCanvas
from .block_diffusion_step import BlockDiffusionState, BlockStepSet
from .block_settings import BlockSettings
from .block_step import BlockDone
from .buckets import bucket_pad_id
from .context_window import fit_prompt
from .cuda_graph import use_cuda_graphs
from .graph_sets import run_graphed
from .nonfinite import raise_on_nonfinite
from .output import GenerateOutput
from .settings import LLADA2_REFERENCE as REFERENCE


@dataclass(frozen=True)
class BlockHooks:
    """How a sampler built on ``block_generate``'s steps (DiffuGuard) changes them; eager only
    (the block-diffusion twin of ``llada.StepHooks``).

    Attributes:
        rank: ``rank(confidence, slots)`` (both ``[B, W]``: the block's confidences and canvas
            slots), the score the schedule's count commits by (LLaDA2.0's top-k half; the
            ``threshold`` still compares the model's confidence).
        block_end: ``block_end(run, block)``, called after each block's steps and before its
            EOS stop (an audit, which may decode the block again with
            ``BlockRun.redo_block``).
    """

    rank: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    block_end: Callable[[BlockRun, int], None] | None = None


@torch.no_grad()
def block_generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    steps: int = REFERENCE.steps,
    gen_length: int = REFERENCE.gen_length,
    block_length: int = REFERENCE.block_length,
    temperature: float = REFERENCE.temperature,
    top_p: float | None = None,
    top_k: int | None = None,
    eos_early_stop: bool = False,
    minimal_topk: int = REFERENCE.minimal_topk,
    threshold: float = REFERENCE.threshold,
    editing_threshold: float | None = REFERENCE.editing_threshold,
    max_post_steps: int = REFERENCE.max_post_steps,
    num_to_transfer: int = REFERENCE.num_to_transfer,
    eos_id: int | None = None,
    mask_id: int | None = None,
    cache: str | None = "prefix",
    stop_at_eos: bool = True,
    return_trace: bool = False,
    generator: torch.Generator | None = None,
    cuda_graphs: bool | str = "auto",
    truncate: str | None = None,
    response: torch.Tensor | None = None,
    hooks: BlockHooks | None = None,
) -> torch.Tensor | GenerateOutput:
    """Sample responses with LLaDA2.x's block-diffusion decoding (docs/DESIGN.md §6).

    Blocks of ``block_length`` are counted from each sequence's first token; decoding starts
    at the block holding the prompt's end and runs block by block, each step running the
    model under block-causal attention (bidirectional in a block, causal across blocks). At
    temperature 0 each row equals the published ``LLaDA2MoeModelLM.generate`` (LLaDA2.0, or
    LLaDA2.1's with ``editing_threshold``) run on it alone, token for token up to its first
    EOS, with one documented difference: confidence ties go to the lower position.

    Args:
        model: a mosa block-diffusion model (a LLaDA2.x checkpoint loaded with
            ``mosa.load_model``, or a transformers one, which ``mosa.from_hf`` adopts).
        input_ids: ``int[B, P]``, left-padded when rows differ (give ``attention_mask``).
        steps: LLaDA2.0's steps per block (at most ``gen_length // minimal_topk``); each
            step commits every masked position whose confidence is above ``threshold`` when
            at least the schedule's count are, else that many of the most confident (the
            schedule splits ``block_length`` evenly over the steps). Not used by LLaDA2.1.
        gen_length: response tokens; the last block may run past them (they are decoded
            and cut, as published).
        temperature: 0 for greedy; > 0 samples (counter-based noise seeded from
            ``generator``), after ``top_k`` then ``top_p`` filtering.
        eos_early_stop: LLaDA2.0 stops a row inside a block once its first EOS has nothing
            masked before it (LLaDA2.1: after a fully decoded block with an EOS). As
            published, the first EOS is searched from the prompt's first token on, so a
            prompt holding EOS ends the response at the first EOS any step commits.
        threshold: the confidence a masked position must exceed to be committed in
            parallel; above 1 only the schedule (LLaDA2.0) or ``num_to_transfer`` commits.
        editing_threshold: None (default) for LLaDA2.0; a number runs LLaDA2.1's loop: per
            step the mask rule with ``num_to_transfer`` as its count, and decoded
            (non-prompt) tokens of the block replaced where the model predicts another
            with confidence above it; a block ends when nothing is masked and nothing was
            edited, or after ``max_post_steps`` steps past its filling.
        eos_id, mask_id: default to the model config's, else the published 156892 / 156895.
        cache: ``'prefix'`` (default, exact under block-causal attention: finished blocks'
            keys and values are kept and each step runs its block only) or None.
        stop_at_eos: a row whose response holds an EOS after a block stops, and everything
            after its first EOS becomes EOS (the published code stops there and cuts after
            it). False decodes every block and returns them as decoded.
        return_trace: return a ``GenerateOutput`` whose ``commit_step`` is the step of each
            row's own decoding (as if alone) at which a position was last written.
        generator: CPU ``torch.Generator`` for temperature > 0.
        cuda_graphs: ``"auto"`` (default) replays each step shape as a CUDA graph on CUDA
            with a mosa model at temperature 0, across blocks and calls of the same shape;
            ``True`` raises where unsupported, ``False`` is always eager.
        truncate: ``'left'`` keeps the end of a prompt that does not fit the model's
            context with ``gen_length`` (refused by default).
        response: optional ``int[G]``/``int[B, G]`` initial response (``G = gen_length``):
            ids other than ``mask_id`` are fixed tokens, written at their response
            positions (after each row's shift to its blocks) and never remasked nor edited
            (LLaDA2.1's ``editing_threshold`` leaves them), as ``generate``'s. A fixed token
            counts as committed: it is no candidate, a block whose masks are all filled ends
            (a whole fixed block runs no step), and its trace is -1. Unlike ``generate``,
            which splits a block's masked count over its steps, LLaDA2.0's schedule stays
            the published split of ``block_length`` (as for a block the prompt partly fills),
            so a block holding fixed tokens may take fewer steps.
        hooks: ``BlockHooks`` of a sampler built on these steps (DiffuGuard); eager only.

    Returns ``int64[B, P + gen_length]`` in the input's layout (prompt and padding as given),
    or a ``GenerateOutput``.
    """
    model = adopt_model(model)
    check_block_diffusion_model(model)
    check_sampler_arguments(model, input_ids, steps)
    check_generator(generator)
    settings = BlockSettings.check(
        model, steps=steps, gen_length=gen_length, block_length=block_length,
        temperature=temperature, top_p=top_p, top_k=top_k, threshold=threshold,
        minimal_topk=minimal_topk, editing_threshold=editing_threshold,
        max_post_steps=max_post_steps, num_to_transfer=num_to_transfer,
        eos_early_stop=eos_early_stop, stop_at_eos=stop_at_eos, cache=cache, mask_id=mask_id,
        eos_id=eos_id,
    )  # fmt: skip
    input_ids, attention_mask = fit_prompt(model, input_ids, attention_mask, gen_length, truncate)
    prompts = build_canvas(input_ids, attention_mask, gen_length, settings.mask_id, response)
    canvas = BlockCanvas.lay_out(
        prompts, block_length, settings.mask_id, bucket_pad_id(model, settings.mask_id)
    )
    graphs = use_cuda_graphs(
        cuda_graphs, device=canvas.x.device, model=model,
        unmet={
            "temperature must be 0 (sampling noise is seeded per step)": temperature != 0,
            "hooks must be None (they run eagerly)": hooks is not None,
        },
    )  # fmt: skip
    state = None
    if graphs:
        rows, length = canvas.x.shape
        key = ("block", settings.graph_key, rows, length, canvas.key_valid is not None)
        state = run_graphed(
            model, cuda_graphs, key,
            make=lambda sets: _step_set(model, settings, canvas, sets),
            run=lambda steps: _decode(steps, canvas),
        )  # fmt: skip
    if state is None:  # eager, or the graph path failed and "auto" falls back
        hooks = BlockHooks() if hooks is None else hooks
        steps = _step_set(model, settings, canvas, None, generator, hooks.rank)
        state = _decode(steps, canvas, hooks.block_end)
    return _finish(state, canvas, settings, prompts.x[:, : prompts.prompt_length], return_trace)


def check_block_diffusion_model(model) -> None:
    """``block_generate`` decodes mosa models of a block-diffusion family only."""
    if not isinstance(model, DiffusionLM):
        raise TypeError(
            f"block_generate needs a mosa block-diffusion model (mosa.load_model of a LLaDA2.x "
            f"folder, or mosa.from_hf of one loaded with transformers), got {type(model).__name__}"
        )
    family = family_of(model)
    if not family.block_diffusion:
        sampler = family.sampler.partition(":")[2]
        raise ValueError(
            f"{family.label} is not a block-diffusion model; sample it with mosa.{sampler}"
        )


def _step_set(
    model, settings, canvas: BlockCanvas, sets, generator=None, rank=None
) -> BlockStepSet:
    rows, length = canvas.x.shape
    state = BlockDiffusionState.allocate(
        rows, length, canvas.x.device, canvas.key_valid is not None,
        None if settings.editing else settings.steps,
    )  # fmt: skip
    return BlockStepSet(model, settings, state, sets is not None, sets, generator, rank)


@dataclass
class BlockRun:
    """One ``block_generate`` call's decoding, as a ``BlockHooks.block_end`` hook sees it:
    ``steps`` (its ``state`` holds the canvas, trace and flags) over the aligned ``canvas``."""

    steps: BlockStepSet
    canvas: BlockCanvas

    @property
    def state(self) -> BlockDiffusionState:
        return self.steps.state

    def block_slots(self, block: int) -> slice:
        """The canvas slots of block ``block`` (the same for every row: rows are aligned)."""
        width = self.steps.settings.block_length
        return slice(block * width, (block + 1) * width)

    def redo_block(self, block: int, rows: torch.Tensor) -> None:
        """Re-masks block ``block`` of ``rows`` (``bool[B]``; given tokens stay) and decodes it
        again for those rows alone; its steps count as the rows' steps."""
        state, mask_id = self.state, self.steps.settings.mask_id
        slots = self.block_slots(block)
        free = ~state.given[:, slots] & rows[:, None]
        state.x[:, slots] = state.x[:, slots].masked_fill(free, mask_id)
        state.trace[:, slots] = state.trace[:, slots].masked_fill(free, -1)
        _decode_block(self.steps, self.canvas, block, rows)


def _decode(steps: BlockStepSet, canvas: BlockCanvas, block_end=None) -> BlockDiffusionState:
    """Decodes ``canvas`` block by block with ``steps``; the host reads each step's
    block-done flag (``BlockDone``) and, after each block, whether a row is left.
    ``block_end``: ``BlockHooks.block_end``."""
    state, settings = _load(steps, canvas), steps.settings
    run = BlockRun(steps, canvas)
    for block in range(canvas.first_block, canvas.num_blocks):
        _decode_block(steps, canvas, block)
        if block_end is not None:
            block_end(run, block)
        state.end_block(settings, block)
        left = (state.end_blocks > block + 1) & ~state.stopped
        nonfinite, more = torch.stack([state.nonfinite.any(), left.any()]).tolist()
        if nonfinite:
            raise_on_nonfinite(state.nonfinite)
        if not more:
            break
    return state


def _decode_block(steps: BlockStepSet, canvas: BlockCanvas, block: int, rows=None) -> None:
    """Runs block ``block``'s steps (for ``rows``, ``bool[B]``, only when given)."""
    state, settings = steps.state, steps.settings
    state.begin_block(block, rows)
    done = BlockDone(state.block_done)
    for i in range(settings.max_block_steps):
        steps.run(steps.shape(block, canvas.first_block, i))
        if done.after_step(i):
            break
    else:
        if settings.editing and not bool(state.block_done):
            raise ValueError(
                f"block {block} was never filled in {settings.max_block_steps} steps: the "
                f"model keeps predicting the mask token ({settings.mask_id}) at masked "
                "positions; check mask_id"
            )


def _load(steps: BlockStepSet, canvas: BlockCanvas) -> BlockDiffusionState:
    """Copies the call's canvas into the set's tensors (the ones its graphs read)."""
    state, settings = steps.state, steps.settings
    state.x.copy_(canvas.x)
    state.given.copy_(canvas.x != settings.mask_id)
    state.trace.fill_(-1)
    if state.key_valid is not None:
        state.key_valid.copy_(canvas.key_valid)
    steps.refresh_positions()
    state.row_start.copy_(canvas.row_start)
    state.response_start.copy_(canvas.response_start)
    state.end_blocks.copy_(canvas.end_blocks)
    for flags in (state.stopped, state.prompt_eos, state.row_steps, state.count, state.nonfinite):
        flags.zero_()
    if state.schedule is not None:
        state.schedule.copy_(even_schedule(settings.block_length, settings.steps))
    return state


def even_schedule(block_length: int, steps: int) -> torch.Tensor:
    """LLaDA2.0's commits per step: ``block_length`` split evenly over ``steps``, the first
    ``block_length % steps`` steps taking one more (the block's length, not its masked
    count, as published)."""
    base, extra = divmod(block_length, steps)
    return base + (torch.arange(steps) < extra).long()


def _finish(state, canvas: BlockCanvas, settings, prompt, return_trace):
    """The responses in the input's layout; with ``stop_at_eos`` EOS after each first EOS."""
    response, trace = canvas.responses(state.x), canvas.responses(state.trace)
    if settings.stop_at_eos:
        is_eos = response == settings.eos_id
        length = response.shape[1]
        first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), length)
        first = torch.where(state.prompt_eos, -1, first)  # stopped at its prompt's EOS: empty
        after = torch.arange(length, device=response.device)[None] > first[:, None]
        response = response.masked_fill(after, settings.eos_id)
        trace = trace.masked_fill(after, -1)
    sequences = torch.cat([prompt.to(torch.long), response], dim=1)
    if not return_trace:
        return sequences
    return GenerateOutput(sequences=sequences, commit_step=trace, steps=int(state.count))

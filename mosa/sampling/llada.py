"""``generate``: LLaDA's reference sampler, token for token, plus the fast modes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mosa.models import adopt_model
from mosa.models.families import is_block_diffusion
from mosa.text.canvas import Canvas, build_canvas, first_masked_position
from mosa_kernels import sample_tokens
from mosa_kernels.ops._checks import check_nonnegative, check_positive_int
from mosa_kernels.ops.select_transfer import check_threshold
from mosa_kernels.random import check_generator

from .arguments import check_mask_id, check_sampler_arguments
from .block_step import BlockDone, StepSet, StepShape, StepState
from .buckets import bucket_canvas, bucket_pad_id
from .context_window import fit_prompt
from .cuda_graph import use_cuda_graphs
from .graph_sets import run_graphed
from .nonfinite import raise_on_nonfinite
from .output import GenerateOutput
from .predictor import Predictor, model_token_id
from .schedule import llada_transfer_counts
from .settings import LLADA_REFERENCE

LLADA_MASK_ID = 126336
LLADA_EOS_ID = 126081
LLADA_EOT_ID = 126348


@dataclass(frozen=True)
class RemaskingRule:
    """How a ``remasking`` rule ranks the masked positions a step may commit."""

    confidence: str
    """``sample_tokens``'s ``confidence`` kind: the score the highest positions commit by."""
    needs_noise: bool
    """Whether the score draws noise: ``generate`` then seeds each step from ``generator``
    (and scores every position of the window, not only the masked ones it could narrow to)."""
    cuda_graphs: bool
    """Whether a step with this rule may be captured as a CUDA graph (a graph freezes the
    noise seed, so a rule that draws noise may not)."""


REMASKING_RULES = {
    "low_confidence": RemaskingRule("prob", needs_noise=False, cuda_graphs=True),
    "random": RemaskingRule("random", needs_noise=True, cuda_graphs=False),
}
"""``generate``'s ``remasking`` rules by name; a new rule is one entry (``mosa sample
--remasking`` offers every one)."""
REMASKING = tuple(REMASKING_RULES)


@torch.no_grad()
def generate(
    model,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    steps: int = LLADA_REFERENCE.steps,
    gen_length: int = LLADA_REFERENCE.gen_length,
    block_length: int = LLADA_REFERENCE.block_length,
    temperature: float = LLADA_REFERENCE.temperature,
    cfg_scale: float = LLADA_REFERENCE.cfg_scale,
    remasking: str = LLADA_REFERENCE.remasking,
    mask_id: int | None = None,
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    threshold: float | None = None,
    factor: float | None = None,
    cache: str | None = None,
    stop_at_eos: bool = False,
    generator: torch.Generator | None = None,
    return_trace: bool = False,
    *,
    cuda_graphs: bool | str = "auto",
    prompt_bucket: int = 16,
    response: torch.Tensor | None = None,
    eos_id: int | None = None,
    eot_id: int | None = None,
    truncate: str | None = None,
    fill_prompt_masks: bool = False,
) -> torch.Tensor | GenerateOutput:
    """Sample a response with LLaDA's semi-autoregressive, low-confidence-remasking sampler.

    With the defaults (temperature 0, no cache, no threshold) the result equals LLaDA's
    published ``generate()`` token for token, with two documented differences: confidence
    ties are broken towards the lower position (``torch.topk`` leaves their order
    unspecified), and padding is masked in attention.

    Args:
        model: a ``mosa`` model (fused path: hidden states of the active window only, fused
            LM head and selection), a LLaDA / Dream model loaded with transformers (adopted by
            ``mosa.from_hf``, so it takes the fused path too), or any other model whose
            forward returns ``.logits``.
        prompt: ``int[B, P]``, left-padded when rows differ (give ``attention_mask``).
        steps, gen_length, block_length: ``gen_length % block_length == 0`` and
            ``steps % (gen_length // block_length) == 0``; each block gets an equal share.
        temperature: 0 for greedy; > 0 samples by Gumbel-max (counter-based noise seeded from
            ``generator``, so runs repeat).
        cfg_scale: classifier-free guidance; the unconditional pass masks the prompt.
        remasking: a rule of ``REMASKING_RULES``: ``'low_confidence'`` or ``'random'``.
        mask_id: defaults to the model's ``mask_token_id`` (LLaDA's 126336 otherwise).
        logits_eos_inf: EOS never sampled. confidence_eos_eot_inf: LLaDA's quirk — after the
            token is chosen, EoT (and at temperature 0 also EOS) leave the confidence softmax,
            so choosing them gives confidence 0.
        threshold / factor: Fast-dLLM parallel decoding — each step commits every masked
            position of the block whose confidence passes the rule (at least one); blocks run
            until filled and ``steps`` is not used. ``threshold`` lies in (0, 1].
        cache: ``None``, ``'prefix'`` or ``'dual'`` (approximate, as in Fast-dLLM): keys and
            values are recomputed for the whole sequence at each block start only.
        stop_at_eos: at block boundaries, a row whose response has a committed EOS with
            nothing masked before it is finished: its masked positions become EOS and it
            leaves the batch.
        generator: CPU ``torch.Generator`` for temperature > 0 and random remasking.
        return_trace: return a ``GenerateOutput`` with the step each position was committed.
        cuda_graphs: ``"auto"`` (default): on CUDA, with a ``mosa`` model, temperature 0,
            low-confidence remasking and neither EOS option, each step shape is captured once
            as a CUDA graph and replayed (a step costs the host one launch instead of one per
            kernel), across blocks and across calls of the same shape (``clear_cuda_graphs``
            frees them, ``limit_cuda_graph_memory`` bounds their bytes); eager otherwise,
            and under ``torch.autocast``. ``True`` raises where graphs are unsupported,
            ``False`` always runs eagerly. A capture that fails falls back to the eager
            sampler with a warning on "auto" (``True`` raises ``GraphCaptureError``). The graph path runs the head on every position of
            the window (the eager path on its masked positions only), so near-ties may round
            differently.
        prompt_bucket: on the graph path, the prompt is left-padded to a multiple of this many
            tokens so nearby prompt lengths share graphs (1: off); padding is never attended
            to, and the returned sequences do not include it.
        response: optional ``int[G]``/``int[B, G]`` initial response; ids other than
            ``mask_id`` are fixed tokens, never remasked.
        eos_id, eot_id: default to the model config's, else LLaDA's 126081 / 126348.
        truncate: a prompt that with ``gen_length`` exceeds the model's
            ``max_sequence_length`` is refused (ValueError) when None; ``'left'`` keeps its
            last tokens instead, with a warning (``context_window.fit_prompt``); the result
            then holds the kept prompt tokens only.
        fill_prompt_masks: a prompt holding ``mask_id`` is refused (ValueError) unless True;
            then those positions are filled too, as in LLaDA's reference.

    Returns the sequences ``int64[B, P + G]`` (prompt included), or a ``GenerateOutput``.
    """
    model = adopt_model(model)
    if is_block_diffusion(model):
        raise ValueError(
            f"{type(model).__name__} is a block-diffusion model (block-causal attention), "
            "which generate does not decode; sample it with mosa.block_generate"
        )
    check_sampler_arguments(model, prompt, steps)
    check_generator(generator)
    settings = SamplerSettings.check(
        model, steps=steps, gen_length=gen_length, block_length=block_length,
        temperature=temperature, cfg_scale=cfg_scale, remasking=remasking, mask_id=mask_id,
        logits_eos_inf=logits_eos_inf, confidence_eos_eot_inf=confidence_eos_eot_inf,
        threshold=threshold, factor=factor, cache=cache, stop_at_eos=stop_at_eos,
        prompt_bucket=prompt_bucket, eos_id=eos_id, eot_id=eot_id,
    )  # fmt: skip
    prompt, attention_mask = fit_prompt(model, prompt, attention_mask, gen_length, truncate)
    canvas = build_canvas(
        prompt, attention_mask, gen_length, settings.mask_id, response, fill_prompt_masks
    )
    graphs = use_cuda_graphs(cuda_graphs, device=canvas.x.device, model=model, unmet={
        "temperature must be 0 (sampling noise is seeded per step)": temperature != 0,
        f"remasking must be {_graph_rules()}": not REMASKING_RULES[remasking].cuda_graphs,
        "logits_eos_inf and confidence_eos_eot_inf must be False": (
            logits_eos_inf or confidence_eos_eot_inf
        ),
    })  # fmt: skip
    run, added = None, 0
    if graphs:
        bucketed, added = bucket_canvas(
            canvas, prompt_bucket, bucket_pad_id(model, settings.mask_id)
        )
        rows, padded = bucketed.x.shape[0], bucketed.attention_mask is not None
        run = run_graphed(
            model, cuda_graphs, (settings.graph_key, rows, bucketed.x.shape[1], padded),
            make=lambda sets: _make_step_set(model, settings, bucketed, rows, sets),
            run=lambda steps: _Generation(model, settings, bucketed, generator, steps).run(),
        )  # fmt: skip
    if run is None:  # eager, or the graph path failed and "auto" falls back
        run, added = _Generation(model, settings, canvas, generator).run(), 0
    sequences = run.x[:, added:]
    if not return_trace:
        return sequences
    trace = run.trace[:, run.prompt_length :]
    return GenerateOutput(sequences=sequences, commit_step=trace, steps=int(run.count))


@dataclass(frozen=True)
class SamplerSettings:
    """``generate``'s options, checked, with the values that follow from them."""

    mask_id: int
    eos_id: int
    eot_id: int
    gen_length: int
    block_length: int
    num_blocks: int
    steps_per_block: int
    temperature: float
    cfg_scale: float
    remasking: str
    logits_eos_inf: bool
    confidence_eos_eot_inf: bool
    threshold: float | None
    factor: float | None
    cache: str | None
    stop_at_eos: bool
    prompt_bucket: int

    @classmethod
    def check(cls, model, *, steps, mask_id, eos_id, eot_id, **options) -> SamplerSettings:
        """Raises a ValueError naming the bad option and the fix."""
        mask_id = (
            model_token_id(model, "mask_token_id", LLADA_MASK_ID) if mask_id is None else mask_id
        )
        eos_id = model_token_id(model, "eos_token_id", LLADA_EOS_ID) if eos_id is None else eos_id
        eot_id = model_token_id(model, "eot_token_id", LLADA_EOT_ID) if eot_id is None else eot_id
        check_mask_id(model, mask_id)
        check_nonnegative("temperature", options["temperature"])
        check_nonnegative("cfg_scale", options["cfg_scale"], " (0: no guidance)")
        if options["remasking"] not in REMASKING_RULES:
            raise ValueError(
                f"remasking must be one of {tuple(REMASKING_RULES)}, got {options['remasking']!r}"
            )
        for name in ("gen_length", "block_length", "prompt_bucket"):
            check_positive_int(name, options[name])
        gen_length, block_length = options["gen_length"], options["block_length"]
        if gen_length % block_length:
            raise ValueError(
                f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})"
            )
        num_blocks = gen_length // block_length
        if options["threshold"] is not None and options["factor"] is not None:
            raise ValueError("give threshold or factor, not both")
        if options["threshold"] is not None:
            check_threshold(options["threshold"])
        parallel = options["threshold"] is not None or options["factor"] is not None
        if not parallel and (steps < num_blocks or steps % num_blocks):
            raise ValueError(
                f"steps ({steps}) must be a positive multiple of the number of blocks ({num_blocks})"
            )
        return cls(
            mask_id=mask_id, eos_id=eos_id, eot_id=eot_id, num_blocks=num_blocks,
            steps_per_block=steps // num_blocks, **options,
        )  # fmt: skip

    @property
    def parallel(self) -> bool:
        return self.threshold is not None or self.factor is not None

    @property
    def needs_noise(self) -> bool:
        return self.temperature > 0 or REMASKING_RULES[self.remasking].needs_noise

    @property
    def graph_key(self) -> tuple:
        """Everything a captured step freezes besides its shape."""
        return (self.mask_id, self.cfg_scale, self.cache, self.threshold, self.factor,
                None if self.parallel else self.steps_per_block)  # fmt: skip


@dataclass(frozen=True)
class StepHooks:
    """How a sampler built on ``generate``'s steps (DiffuGuard) changes them; eager only.

    Attributes:
        rank: ``BlockStep.rank``, the score a step commits by instead of the confidence.
        block_end: called as ``block_end(generation, block)`` after each block is committed
            (an audit, which may decode the block again with ``_Generation.redo_block``).
    """

    rank: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    block_end: Callable[[_Generation, int], None] | None = None


class _Generation:
    """The canvas, trace and step count of one ``generate`` call, run block by block by the
    step sets of its batch shapes (rows leave the batch with ``stop_at_eos``), or by
    ``graphed``, a set of the whole batch replaying CUDA graphs. ``hooks`` (eager only)
    change the steps and follow each block."""

    def __init__(
        self, model, settings: SamplerSettings, canvas: Canvas, generator, graphed=None,
        hooks: StepHooks | None = None,
    ):  # fmt: skip
        self.model, self.settings, self.graphed = model, settings, graphed
        self.hooks = StepHooks() if hooks is None else hooks
        self.graphs = graphed is not None
        # A copy: a graph path that fails mid-call leaves the caller's canvas for the eager run.
        self.x, self.prompt_length = canvas.x.clone(), canvas.prompt_length
        self.key_valid = canvas.attention_mask
        self.given = self.x != settings.mask_id
        self.trace = torch.full_like(self.x, -1)
        self.count = torch.zeros((), dtype=torch.long, device=self.x.device)
        self.active = torch.arange(self.x.shape[0], device=self.x.device)
        self.generator = generator if settings.needs_noise else None

    def run(self) -> _Generation:
        """Runs every block (until every row has finished)."""
        for block in range(self.settings.num_blocks):
            if not self.block(block):
                break
            if self.hooks.block_end is not None:
                self.hooks.block_end(self, block)
        return self

    def block_span(self, block: int) -> tuple[int, int]:
        """The canvas positions ``[start, end)`` of block ``block``."""
        start = self.prompt_length + block * self.settings.block_length
        return start, start + self.settings.block_length

    def redo_block(self, block: int, rows: torch.Tensor) -> None:
        """Re-masks block ``block`` of ``rows`` (its given tokens stay) and decodes it again
        for those rows alone; its steps count as steps of the generation."""
        start, end = self.block_span(block)
        free = ~self.given[rows, start:end]
        self.x[rows, start:end] = self.x[rows, start:end].masked_fill(free, self.settings.mask_id)
        self.trace[rows, start:end] = self.trace[rows, start:end].masked_fill(free, -1)
        everyone, self.active = self.active, rows
        try:
            self.block(block)
        finally:
            self.active = everyone

    def block(self, block: int) -> bool:
        """Runs block ``block``; False when every row has finished (``stop_at_eos``)."""
        settings = self.settings
        start, end = self.block_span(block)
        if settings.stop_at_eos and block > 0:
            running = _drop_finished(
                self.x, self.active, self.prompt_length, start, settings.mask_id, settings.eos_id
            )
            if running.numel() == 0:
                return False
            # Eager, finished rows leave the batch. With graphs they stay (all committed, their
            # steps commit nothing): a smaller batch would be a new shape to capture and keep.
            if not self.graphs:
                self.active = running
        steps = self._load(self._step_set(self.active.numel()))
        state = steps.state
        # Positions left of the block stay candidates while masked (prompt masks, or a model
        # that predicted the mask token), as in the reference; one host read per block.
        window = first_masked_position(state.x[:, :start], settings.mask_id, default=start)
        state.window_start.fill_(window)
        first, stop = steps.predictor.cached_span(window, end, state.x.shape[1])
        refresh = StepShape(True, end - window, None)
        step = refresh if settings.cache is None else StepShape(False, end - window, stop - first)
        if settings.parallel:
            done = BlockDone(state.done)
            # Each step commits at least one masked position while any is left.
            for i in range(end - window):
                steps.run(refresh if i == 0 else step)
                if done.after_step(i):
                    break
        else:
            counts = llada_transfer_counts(
                state.x[:, start:end] == settings.mask_id, settings.steps_per_block
            )
            state.k_table.copy_(counts)
            state.step_in_block.zero_()
            # A rank hook scores every position of the window, as noise does.
            narrow = (
                None
                if self.graphs or settings.needs_noise or self.hooks.rank is not None
                else _widest(state.x, window, end, counts, settings.mask_id)
            )
            for i in range(settings.steps_per_block):
                steps.run(refresh if i == 0 else step, None if narrow is None else narrow[i])
        self._store(steps)
        raise_on_nonfinite(state.nonfinite, self.active)
        return True

    def _step_set(self, rows: int) -> StepSet:
        if self.graphed is not None:
            return self.graphed
        canvas = Canvas(self.x, self.key_valid, self.prompt_length)
        return _make_step_set(
            self.model, self.settings, canvas, rows, None, self.generator, self.hooks.rank
        )

    def _load(self, steps: StepSet) -> StepSet:
        """Copies the active rows into the set's tensors (the ones its graphs read)."""
        state, rows = steps.state, self.active
        state.x.copy_(self.x[rows])
        state.given.copy_(self.given[rows])
        state.trace.copy_(self.trace[rows])
        state.count.copy_(self.count)
        state.nonfinite.zero_()
        if state.key_valid is not None:
            state.key_valid.copy_(self.key_valid[rows])
        steps.predictor.reuse(state.key_valid)
        return steps

    def _store(self, steps: StepSet) -> None:
        state, rows = steps.state, self.active
        self.x[rows], self.trace[rows] = state.x, state.trace
        self.count.copy_(state.count)


def _make_step_set(
    model, settings: SamplerSettings, canvas: Canvas, rows: int, sets, generator=None, rank=None
) -> StepSet:
    """A set of ``rows`` rows of ``canvas``'s length; with ``sets`` (a ``GraphCache``) its
    steps are replayed as CUDA graphs, and it shares the KV cache of a set of its shape.
    ``rank``: ``BlockStep.rank`` (eager sets only)."""
    padded = canvas.attention_mask is not None
    state = StepState.allocate(
        rows, canvas.x.shape[1], canvas.x.device, padded,
        None if settings.parallel else settings.steps_per_block,
    )  # fmt: skip
    predictor = Predictor(
        model, mask_id=settings.mask_id, cfg_scale=settings.cfg_scale,
        cache=settings.cache, shift_logits=False,
    )  # fmt: skip
    if sets is not None and settings.cache is not None:
        kv_rows = rows * (2 if settings.cfg_scale > 0 else 1)
        shared = sets.kv_cache(kv_rows, canvas.x.shape[1], padded)
        if shared is not None:
            predictor.share_cache(shared)
    options = dict(
        sample=_sampler(settings, predictor), threshold=settings.threshold,
        factor=settings.factor, mask_id=settings.mask_id,
        check_ids=functools.partial(_check_special_ids, settings), generator=generator,
        rank=rank,
    )  # fmt: skip
    return StepSet(state, predictor, options, sets is not None, sets)


def _sampler(settings: SamplerSettings, predictor: Predictor):
    """``sample_tokens`` with everything but the rows bound."""
    exclude = [settings.eos_id, settings.eot_id] if settings.temperature == 0 else [settings.eot_id]
    return functools.partial(
        sample_tokens, weight=predictor.weight, bias=predictor.bias,
        cfg_scale=settings.cfg_scale, temperature=settings.temperature,
        confidence=REMASKING_RULES[settings.remasking].confidence,
        suppress=[settings.eos_id] if settings.logits_eos_inf else [],
        exclude_from_confidence=exclude if settings.confidence_eos_eot_inf else [],
        nonfinite="mark",
    )  # fmt: skip


def _graph_rules() -> str:
    """The remasking rules a CUDA graph may run, for the message that names them."""
    return " or ".join(repr(name) for name, rule in REMASKING_RULES.items() if rule.cuda_graphs)


def _widest(x, window, end, counts, mask_id) -> list[int]:
    """Before each step of a fixed-schedule block, the most masked positions any row has left
    in ``[window, end)`` (each step commits exactly ``counts``); reads the host once a block."""
    masked = (x[:, window:end] == mask_id).sum(dim=1, keepdim=True)
    left = masked - (counts.cumsum(dim=1) - counts)
    return left.max(dim=0).values.tolist()


def _check_special_ids(settings: SamplerSettings, vocab: int) -> None:
    wanted = (
        {"eos_id": settings.eos_id}
        if settings.logits_eos_inf or settings.confidence_eos_eot_inf
        else {}
    )
    if settings.confidence_eos_eot_inf:
        wanted["eot_id"] = settings.eot_id
    for name, value in wanted.items():
        if not 0 <= value < vocab:
            raise ValueError(
                f"{name}={value} is outside the model's vocabulary ({vocab}); pass {name} "
                "explicitly (the defaults are LLaDA-8B's ids)"
            )


def _drop_finished(x, active, prompt_length, start, mask_id, eos_id):
    """Fills finished rows with EOS and returns the rows still generating."""
    response = x[active, prompt_length:start]
    is_eos = response == eos_id
    has_eos = is_eos.any(dim=1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), response.shape[1])
    position = torch.arange(response.shape[1], device=x.device)[None]
    masked_before = ((response == mask_id) & (position < first_eos[:, None])).any(dim=1)
    finished = has_eos & ~masked_before
    if bool(finished.any()):
        rows = active[finished]
        tail = x[rows, prompt_length:]
        x[rows, prompt_length:] = torch.where(tail == mask_id, torch.full_like(tail, eos_id), tail)
    return active[~finished]

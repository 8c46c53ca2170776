"""A training-free, DiffuGuard-style defense run inside LLaDA's block sampler.

DiffuGuard (Li et al., ICLR 2026, "DiffuGuard: How Intrinsic Safety is Lost and Found in
Diffusion LLMs") observes that greedy low-confidence remasking is biased towards harmful
continuations and that the first committed tokens decide the rest of the answer
("denoising-path dependence"). Its two parts, as done here (temperature 0 throughout: a
committed token is always the argmax prediction; only *which* positions a step commits
changes):

1. Stochastic Annealing Remasking (SAR). Each step ranks the masked positions of the block by
   ``(1 - alpha_t) * confidence + alpha_t * u``, ``u ~ U(0, 1)`` i.i.d. per position, and
   commits LLaDA's scheduled number of the best. ``alpha_t`` falls linearly from ``alpha`` at
   the first step of the generation to 0 at the last: random early, where the path is
   decided, greedy late, where quality is. ``alpha = 0`` is ``mosa.generate`` at temperature
   0 token for token.
2. Block-level audit and repair. After a block is committed, a linear probe on the model's
   last hidden states (``harm_probe``: their mean over the prompt and the block) audits it;
   a flagged row has the block's non-fixed tokens re-masked and decoded again with
   ``alpha = 1`` (fully random order, which the paper finds uncovers the model's intrinsic
   refusal), then is audited again, at most ``max_repairs`` times; the last decoding stays.
   ``DiffuGuard.calibrate`` builds the probe. Without a probe only SAR runs.

Differences from the paper, which this is a simplified version of:

- The audit needs calibration data: labelled harmful and benign prompts, answered with SAR,
  give the audit feature at every block end; the probe is linear discriminant analysis on
  them (class-mean difference whitened by a shrunk covariance, threshold at the midpoint of
  the class means' projections). The paper describes its audit as autonomous risk detection
  from internal representations; its risk statistic is not reproduced here.
- The probe learns "harmful request" as much as "harmful answer" (the harmful class's answers
  are mostly refusals), so a harmful request is flagged at about every block, refusing or
  not; every block is audited, not only the early ones.
- Repair is random-order re-decoding of the flagged block alone; the paper's repair is a
  correction guided by the model's internal representations, which is not reproduced here.
- The noise comes from seeded generators (the main pass from ``seed``, each block's repair
  rounds from seeds of their own), so a call repeats and a row's answer does not depend on
  which other rows were repaired. It is ``generate``'s block loop and step (``BlockStep``)
  with ``StepHooks``: SAR ranks through ``rank``, audit and repair run at ``block_end``;
  eager, without a cache: one full forward per step, plus one per audit.
- On a block-diffusion model (LLaDA2) it is ``block_generate``'s blocks and steps with
  ``BlockHooks`` instead (``_run_blocks``): SAR's score ranks the schedule's top-k half (a
  position above ``threshold`` still commits by the model's confidence), alpha falls over
  the response's blocks at the schedule's slowest rate, the audit feature comes from the
  block-causal forward, and a flagged block is decoded again before its EOS stop.

DiffuGuard only re-orders the model's own argmax predictions, so it protects only a model
that still puts probability on its refusal's words; after a prefill the shipped tiny model
does not, and DiffuGuard gives it no protection. The probe's covariance is shrunk (0.05)
because the plain difference of means flags benign prompts. README.md ("Evaluation") has the
measurements.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mosa.models import DiffusionLM, adopt_model
from mosa.models.families import is_block_diffusion
from mosa.text.canvas import build_canvas
from mosa.text.prompts import encode_prompts
from mosa_kernels.random import derive_seed

from .arguments import check_sampler_arguments
from .block_generate import BlockHooks, BlockRun, block_generate
from .context_window import fit_prompt
from .harm_probe import DEFAULT_SHRINKAGE, Probe, pooled_features
from .llada import SamplerSettings, StepHooks, _Generation
from .settings import LLADA_EVALUATION


@dataclass(frozen=True)
class DiffuGuard:
    """DiffuGuard's settings and its optional audit probe.

    Attributes:
        alpha: SAR's randomness at the first step, in [0, 1] (0: greedy, LLaDA's sampler).
        audit: the block audit's probe (``calibrate``); None runs SAR only.
        max_repairs: how many times a flagged block is decoded again, >= 0.
        seed: seeds SAR's and the repairs' noise.
    """

    alpha: float = 0.3
    audit: Probe | None = None
    max_repairs: int = 1
    seed: int = 0

    def __post_init__(self):
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
            raise ValueError(
                f"alpha must be a number in [0, 1] (0: greedy remasking, 1: random order), "
                f"got {alpha!r}"
            )
        if self.audit is not None and not isinstance(self.audit, Probe):
            raise TypeError(
                f"audit must be a Probe (DiffuGuard.calibrate builds one) or None, got "
                f"{type(self.audit).__name__}"
            )
        repairs = self.max_repairs
        if isinstance(repairs, bool) or not isinstance(repairs, int) or repairs < 0:
            raise ValueError(f"max_repairs must be an int >= 0, got {repairs!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")

    def alphas(self, steps: int) -> list[float]:
        """SAR's ``alpha_t`` for each of ``steps`` steps: ``alpha`` down to 0, linearly."""
        if steps == 1:
            return [float(self.alpha)]
        return [self.alpha * (1 - t / (steps - 1)) for t in range(steps)]

    @classmethod
    def calibrate(
        cls,
        model,
        tokenizer,
        harmful: Sequence[str],
        benign: Sequence[str],
        *,
        steps: int = LLADA_EVALUATION.steps,
        gen_length: int = LLADA_EVALUATION.gen_length,
        block_length: int = LLADA_EVALUATION.block_length,
        batch_size: int = 32,
        shrinkage: float = DEFAULT_SHRINKAGE,
        **settings,
    ) -> DiffuGuard:
        """A guard (``settings``: ``alpha``, ``max_repairs``, ``seed``; for a block-diffusion
        model also ``block_generate``'s options of ``BLOCK_OPTIONS``) whose audit probe
        separates ``harmful`` from ``benign`` prompts.

        Each prompt (chat template applied) is answered with SAR under the guard's settings
        and the sampler schedule given (use the one the guard will run with; by default
        ``LLADA_EVALUATION``'s, the eval runner's); the audit
        feature is taken at every block end, and ``Probe.fit`` (with ``shrinkage``) makes
        the probe: harmful minus benign mean feature, whitened, and the midpoint of their
        projections as the threshold.
        """
        if "audit" in settings:
            raise ValueError("calibrate builds the audit; do not pass audit=")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        guard = cls(**{k: v for k, v in settings.items() if k in fields})
        model = _check_model(adopt_model(model))
        sampler = {"steps": steps, "gen_length": gen_length, "block_length": block_length}
        sampler |= {k: v for k, v in settings.items() if k not in fields}
        harmful, benign = (
            _calibration_features(model, tokenizer, prompts, name, guard, sampler, batch_size)
            for name, prompts in (("harmful", harmful), ("benign", benign))
        )
        return dataclasses.replace(guard, audit=Probe.fit(harmful, benign, shrinkage))


def _calibration_features(model, tokenizer, prompts, name, guard, sampler, batch_size):
    """``[N * blocks, d]``: the audit features at every block end of SAR answers to
    ``prompts`` (chat template applied)."""
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{name} must be a non-empty list of prompt strings")
    features = []
    for first in range(0, len(prompts), batch_size):
        ids, mask = encode_prompts(
            tokenizer, prompts[first : first + batch_size], chat_template=True,
            device=model.device,
        )  # fmt: skip
        out = _run(model, ids, mask, guard=guard, collect=True, **sampler)
        features.append(out.features.flatten(0, 1))
    return torch.cat(features)


@dataclass
class GuardOutput:
    """``diffuguard_generate(..., return_details=True)``.

    Attributes:
        sequences: ``int64[B, P + G]``, prompt included.
        commit_step: ``int64[B, G]``, the step each response position was (last) committed
            at, counted over every step run, repairs included; -1 for fixed tokens.
        steps: the steps run (a repair's steps count once, whichever rows it ran).
        repairs: ``int64[B, blocks]``, how often each block of each row was decoded again
            (block diffusion: column k is the k-th block the rows decoded).
        scores: ``float32[B, blocks]``, the audit's final score per block (> 0: flagged), or
            None without an audit.
        features: ``float32[B, blocks, d]``, the audit features (calibration), or None.
    """

    sequences: torch.Tensor
    commit_step: torch.Tensor
    steps: int
    repairs: torch.Tensor
    scores: torch.Tensor | None = None
    features: torch.Tensor | None = None


@torch.no_grad()
def diffuguard_generate(
    model,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    guard: DiffuGuard,
    steps: int,
    gen_length: int,
    block_length: int,
    response: torch.Tensor | None = None,
    mask_id: int | None = None,
    return_details: bool = False,
    fill_prompt_masks: bool = False,
    **block_options,
) -> torch.Tensor | GuardOutput:
    """Sample responses with DiffuGuard's SAR and (when ``guard.audit`` is set) its block
    audit and repair; see the module docstring.

    Args:
        model: a ``mosa`` model (or a transformers LLaDA / Dream that ``mosa.from_hf`` adopts).
        prompt: ``int[B, P]``, left-padded when rows differ (give ``attention_mask``).
        guard: the settings and probe.
        steps, gen_length, block_length: LLaDA's schedule: ``gen_length % block_length == 0``
            and ``steps`` a multiple of the number of blocks. A block-diffusion model (LLaDA2)
            runs ``block_generate``'s steps and blocks instead (``steps`` per block), greedy,
            with its options of ``BLOCK_OPTIONS`` in ``block_options``.
        response: optional ``int[G]``/``int[B, G]`` canvas: ``mask_id`` where the sampler
            fills in, any other id a fixed token, never remasked (repairs included).
        mask_id: defaults to the model's ``mask_token_id``.
        return_details: return a ``GuardOutput`` instead of the sequences.
        fill_prompt_masks: a prompt holding ``mask_id`` is refused unless True (``generate``'s).

    Returns ``int64[B, P + G]``, prompt then response, like ``mosa.generate``. Rows are
    independent; the noise comes from ``guard.seed``, so a call repeats exactly.
    """
    if not isinstance(guard, DiffuGuard):
        raise TypeError(f"guard must be a DiffuGuard, got {type(guard).__name__}")
    model = _check_model(adopt_model(model))
    out = _run(
        model, prompt, attention_mask, guard=guard, steps=steps, gen_length=gen_length,
        block_length=block_length, response=response, mask_id=mask_id,
        fill_prompt_masks=fill_prompt_masks, **block_options,
    )  # fmt: skip
    return out if return_details else out.sequences


@torch.no_grad()
def _run(
    model: DiffusionLM,
    prompt,
    attention_mask,
    *,
    guard: DiffuGuard,
    steps,
    gen_length,
    block_length,
    response=None,
    mask_id=None,
    collect: bool = False,
    fill_prompt_masks: bool = False,
    **block_options,
) -> GuardOutput:
    """The sampler: ``generate``'s blocks and steps (``block_generate``'s for a
    block-diffusion model), ranked by ``_Annealing`` and audited at each block end;
    ``collect`` also returns the audit features of every block end."""
    if is_block_diffusion(model):
        if fill_prompt_masks:
            raise ValueError(
                "fill_prompt_masks is LLaDA's generate's; block_generate refuses a prompt "
                "holding the mask id (put the positions to fill in response=)"
            )
        return _run_blocks(
            model, prompt, attention_mask, guard, collect, steps=steps, gen_length=gen_length,
            block_length=block_length, response=response, mask_id=mask_id, **block_options,
        )  # fmt: skip
    if block_options:
        raise ValueError(
            f"{sorted(block_options)} are block_generate's options (block-diffusion models); "
            f"DiffuGuard on {type(model).__name__} takes steps, gen_length and block_length"
        )
    check_sampler_arguments(model, prompt, steps)
    settings = _sampler_settings(model, steps, gen_length, block_length, mask_id)
    probe = guard.audit
    if probe is not None:
        probe.check_model(model)
    prompt, attention_mask = fit_prompt(model, prompt, attention_mask, gen_length, None)
    canvas = build_canvas(
        prompt, attention_mask, gen_length, settings.mask_id, response, fill_prompt_masks
    )
    batch, length = canvas.x.shape
    per_block = settings.steps_per_block
    everyone = torch.arange(batch, device=canvas.x.device)
    annealing = _Annealing(
        guard.alphas(steps), _noise(torch.Generator().manual_seed(guard.seed), batch, length),
        everyone,
    )  # fmt: skip
    repairs = torch.zeros(batch, settings.num_blocks, dtype=torch.long)
    scores = torch.zeros(batch, settings.num_blocks) if probe is not None else None
    features = [] if collect else None

    def audit(generation: _Generation, block: int) -> None:
        """Scores the block just committed; decodes flagged rows' block again (alpha 1)."""
        start, end = generation.block_span(block)
        block_slice, prompt_length = slice(start, end), generation.prompt_length
        feature = pooled_features(
            model, generation.x, generation.key_valid, prompt_length, block_slice
        )
        if probe is not None:
            score = probe.score(feature)
            for repair in range(guard.max_repairs):
                rows = (score > 0).nonzero()[:, 0]
                if rows.numel() == 0:
                    break
                seed = _repair_seed(guard.seed, block, repair)
                noise = _noise(torch.Generator().manual_seed(seed), batch, length)
                with annealing.switched([1.0] * per_block, noise, rows):
                    generation.redo_block(block, rows)
                key_valid = None if generation.key_valid is None else generation.key_valid[rows]
                feature[rows] = pooled_features(
                    model, generation.x[rows], key_valid, prompt_length, block_slice
                )
                score[rows] = probe.score(feature[rows])
                repairs[rows.cpu(), block] += 1
            scores[:, block] = score.cpu()
        if collect:
            features.append(feature.cpu())

    hooks = StepHooks(rank=annealing, block_end=audit if probe is not None or collect else None)
    generation = _Generation(model, settings, canvas, None, hooks=hooks).run()
    return GuardOutput(
        sequences=generation.x,
        commit_step=generation.trace[:, generation.prompt_length :],
        steps=int(generation.count),
        repairs=repairs,
        scores=scores,
        features=None if features is None else torch.stack(features, dim=1),
    )


BLOCK_OPTIONS = (
    "threshold", "minimal_topk", "editing_threshold", "max_post_steps", "num_to_transfer",
    "eos_early_stop", "stop_at_eos", "cache", "eos_id",
)  # fmt: skip
"""The ``block_generate`` options DiffuGuard passes on for a block-diffusion model (greedy:
no temperature, filters or CUDA graphs; the hooks run eagerly)."""


def _run_blocks(model, prompt, attention_mask, guard: DiffuGuard, collect, **options):
    """DiffuGuard on ``block_generate``: SAR ranks the schedule's top-k half of each step
    (``BlockHooks.rank``), and after each block (before its EOS stop) the audit scores it and
    flagged rows decode it again at ``alpha = 1`` (``BlockHooks.block_end``). Outputs per
    decoded block: the k-th block a row decodes is column k (rows are aligned)."""
    other = sorted(set(options) - {"steps", "gen_length", "block_length", "response", "mask_id"})
    if set(other) - set(BLOCK_OPTIONS):
        raise ValueError(
            f"DiffuGuard runs block_generate greedily with {BLOCK_OPTIONS} at most; drop "
            f"{sorted(set(other) - set(BLOCK_OPTIONS))}"
        )
    probe = guard.audit
    if probe is not None:
        probe.check_model(model)
    batch, width = prompt.shape[0] if prompt.dim() == 2 else 1, options["block_length"]
    everyone = torch.arange(batch, device=prompt.device)
    annealing = _Annealing(
        itertools.chain(
            guard.alphas(_sar_steps(options, _prompt_lengths(prompt, attention_mask))),
            itertools.repeat(0.0),
        ),
        _noise(torch.Generator().manual_seed(guard.seed), batch, width), everyone,
    )  # fmt: skip
    repairs, scores, features = [], [], []

    def rank(confidence: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return annealing(confidence, slots - slots[:, :1])  # the block's own columns

    def audit(run: BlockRun, block: int) -> None:
        """Scores the block just decoded; decodes flagged rows' block again (alpha 1)."""
        state, slots = run.state, run.block_slots(block)
        decoded = block - run.canvas.first_block  # the same block of every row

        def pooled(rows):
            valid = None if state.key_valid is None else state.key_valid[rows, : slots.stop]
            return pooled_features(
                model, state.x[rows, : slots.stop], valid, state.response_start[rows], slots,
                width,
            )  # fmt: skip

        repaired = torch.zeros(batch, dtype=torch.long)
        feature = pooled(everyone) if probe is not None or collect else None
        if probe is not None:
            score = probe.score(feature)
            decodes = (state.end_blocks > block) & ~state.stopped
            for repair in range(guard.max_repairs):
                rows = (score > 0) & decodes
                if not bool(rows.any()):
                    break
                seed = _repair_seed(guard.seed, decoded, repair)
                noise = _noise(torch.Generator().manual_seed(seed), batch, width)
                with annealing.switched(itertools.repeat(1.0), noise, everyone):
                    run.redo_block(block, rows)
                index = rows.nonzero()[:, 0]
                feature[index] = pooled(index)
                score[index] = probe.score(feature[index])
                repaired += rows.cpu()
            scores.append(score.cpu())
        repairs.append(repaired)
        if collect:
            features.append(feature.cpu())

    out = block_generate(
        model, prompt, attention_mask, temperature=0.0, return_trace=True, cuda_graphs=False,
        hooks=BlockHooks(rank=rank, block_end=audit), **options,
    )  # fmt: skip
    return GuardOutput(
        sequences=out.sequences,
        commit_step=out.commit_step,
        steps=out.steps,
        repairs=torch.stack(repairs, dim=1),
        scores=torch.stack(scores, dim=1) if probe is not None else None,
        features=torch.stack(features, dim=1) if collect else None,
    )


def _sar_steps(options: dict, lengths: list[int]) -> int:
    """The steps SAR anneals over on block diffusion: the most blocks a row of prompt
    ``lengths`` decodes, at the steps the schedule alone takes to fill a block (LLaDA2.0:
    ``min(steps, block_length)``, each of the first steps committing at least one; LLaDA2.1:
    ``block_length / num_to_transfer``); steps past them are greedy. A threshold crossing, a
    first block the prompt partly fills and fixed tokens make a block take fewer, so alpha
    may not be down to 0 by the end."""
    width, gen_length = options["block_length"], options["gen_length"]
    blocks = max(-(-(p + gen_length) // width) - p // width for p in lengths)
    if options.get("editing_threshold") is not None:
        return blocks * -(-width // options.get("num_to_transfer", 1))
    steps = min(options["steps"], gen_length // options.get("minimal_topk", 1))
    return blocks * min(steps, width)


def _prompt_lengths(prompt: torch.Tensor, attention_mask: torch.Tensor | None) -> list[int]:
    """Each row's real prompt length (``int[P]`` is one row)."""
    rows = prompt.reshape(-1, prompt.shape[-1])
    if attention_mask is None:
        return [rows.shape[1]] * rows.shape[0]
    return (attention_mask.reshape(rows.shape) != 0).sum(dim=1).tolist()


def _sampler_settings(model, steps, gen_length, block_length, mask_id) -> SamplerSettings:
    """``generate``'s settings for SAR's steps: temperature 0, no guidance, no cache, LLaDA's
    fixed schedule (``SamplerSettings.check`` names a bad length or mask id)."""
    return SamplerSettings.check(
        model, steps=steps, gen_length=gen_length, block_length=block_length, mask_id=mask_id,
        eos_id=None, eot_id=None, temperature=0.0, cfg_scale=0.0, remasking="low_confidence",
        logits_eos_inf=False, confidence_eos_eot_inf=False, threshold=None, factor=None,
        cache=None, stop_at_eos=False, prompt_bucket=1,
    )  # fmt: skip


class _Annealing:
    """SAR's ranking (``BlockStep.rank``): ``(1 - alpha_t) * confidence + alpha_t * u`` with
    one ``alpha_t`` per step and ``u`` the noise of the step's window for ``rows``.

    ``noise`` is drawn every step for every row of the batch, whichever rows the step runs, so
    the stream stays aligned.
    """

    def __init__(self, alphas, noise: Callable[[], torch.Tensor], rows: torch.Tensor):
        self.alphas, self.noise, self.rows = iter(alphas), noise, rows

    @contextlib.contextmanager
    def switched(self, alphas, noise: Callable[[], torch.Tensor], rows: torch.Tensor):
        """Ranks with ``alphas``, ``noise`` and ``rows`` inside the block (a repair)."""
        saved = self.alphas, self.noise, self.rows
        self.alphas, self.noise, self.rows = iter(alphas), noise, rows
        try:
            yield
        finally:
            self.alphas, self.noise, self.rows = saved

    def __call__(self, confidence: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        alpha = next(self.alphas)
        uniform = self.noise()
        if alpha == 0:
            return confidence
        u = uniform[self.rows.cpu()].to(confidence.device).gather(1, index)
        return (1 - alpha) * confidence + alpha * u


def _noise(generator: torch.Generator, batch: int, length: int) -> Callable[[], torch.Tensor]:
    """Draws ``float32[batch, length]`` uniforms per call from ``generator`` (CPU)."""
    return lambda: torch.rand(batch, length, generator=generator)


def _repair_seed(seed: int, block: int, repair: int) -> int:
    """A seed of its own for each (block, repair round): a row's noise then does not depend
    on which other rows were flagged before."""
    return derive_seed(seed, block, repair + 1)


def _check_model(model) -> DiffusionLM:
    if not isinstance(model, DiffusionLM):
        raise TypeError(
            f"diffuguard needs a mosa model (mosa.load_model, or a transformers LLaDA / Dream "
            f"that mosa.from_hf adopts) for its hidden states, got {type(model).__name__}"
        )
    return model

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
  which other rows were repaired. A plain loop without a cache: one full forward per step,
  plus one per audit.

Measured on the shipped tiny model (``mosa.tiny``; held-out prompts of ``corpus.splits(0)``,
40 tokens, blocks of 8, 40 steps; probe calibrated on the 90 harmful and first 90 benign
training prompts): greedy ``generate`` and every setting tried (alpha 0.3, 0.6, 1; audit with
one or two repairs) give the same safety figures: no plain harmful request answered with a
placeholder step, all 30 with the "sure , here is how to" prefill, all 30 jailbreak-wrapped
ones; benign exact answers stay at 90% (88.3% at alpha 0.6). After that prefill the tiny
model puts under 5e-4 probability on its refusal's words at any position, so no decoding
order can reach a refusal: DiffuGuard only re-orders the model's own argmax predictions and
needs refusal mass to uncover. The probe at shrinkage 0.05 flags no held-out benign prompt
(the plain difference of means, shrinkage 1, flags 32%) and 87% of the benign requests that
only sound risky, which still get answered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mosa.models import DiffusionLM, adopt_model
from mosa.text.canvas import Canvas, build_canvas, first_masked_position
from mosa.text.prompts import encode_prompts
from mosa_kernels import sample_tokens, select_transfer
from mosa_kernels.random import derive_seed

from .arguments import check_sampler_arguments
from .context_window import fit_prompt
from .harm_probe import DEFAULT_SHRINKAGE, Probe, pooled_features
from .predictor import model_token_id
from .schedule import llada_transfer_counts
from .settings import LLADA_EVALUATION

LLADA_MASK_ID = 126336


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
        """A guard (``settings``: ``alpha``, ``max_repairs``, ``seed``) whose audit probe
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
        guard = cls(**settings)
        model = _check_model(adopt_model(model))
        sampler = {"steps": steps, "gen_length": gen_length, "block_length": block_length}
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
        repairs: ``int64[B, blocks]``, how often each block of each row was decoded again.
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
) -> torch.Tensor | GuardOutput:
    """Sample responses with DiffuGuard's SAR and (when ``guard.audit`` is set) its block
    audit and repair; see the module docstring.

    Args:
        model: a ``mosa`` model (or a transformers LLaDA / Dream that ``mosa.from_hf`` adopts).
        prompt: ``int[B, P]``, left-padded when rows differ (give ``attention_mask``).
        guard: the settings and probe.
        steps, gen_length, block_length: LLaDA's schedule: ``gen_length % block_length == 0``
            and ``steps`` a multiple of the number of blocks.
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
        fill_prompt_masks=fill_prompt_masks,
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
) -> GuardOutput:
    """The sampler; ``collect`` also returns the audit features of every block end."""
    check_sampler_arguments(model, prompt, steps)
    blocks = _check_schedule(steps, gen_length, block_length)
    if mask_id is None:
        mask_id = model_token_id(model, "mask_token_id", LLADA_MASK_ID)
    if isinstance(mask_id, bool) or not isinstance(mask_id, int):
        raise TypeError(f"mask_id must be an int token id, got {mask_id!r}")
    probe = guard.audit
    if probe is not None:
        probe.check_model(model)
    prompt, attention_mask = fit_prompt(model, prompt, attention_mask, gen_length, None)
    canvas = build_canvas(prompt, attention_mask, gen_length, mask_id, response, fill_prompt_masks)
    state = _State(model, canvas, mask_id)
    batch, length = state.x.shape
    per_block = steps // blocks
    alphas = guard.alphas(steps)
    main_noise = _noise(torch.Generator().manual_seed(guard.seed), batch, length)
    everyone = torch.arange(batch, device=state.x.device)
    repairs = torch.zeros(batch, blocks, dtype=torch.long)
    scores = torch.zeros(batch, blocks) if probe is not None else None
    features = [] if collect else None
    for block in range(blocks):
        start = state.prompt_length + block * block_length
        end = start + block_length
        block_slice = slice(start, end)
        state.decode(everyone, start, end, alphas[block * per_block : (block + 1) * per_block],
                     main_noise)  # fmt: skip
        if probe is None and not collect:
            continue
        feature = pooled_features(model, state.x, state.key_valid, state.prompt_length, block_slice)
        if probe is not None:
            score = probe.score(feature)
            for repair in range(guard.max_repairs):
                rows = (score > 0).nonzero()[:, 0]
                if rows.numel() == 0:
                    break
                seed = _repair_seed(guard.seed, block, repair)
                noise = _noise(torch.Generator().manual_seed(seed), batch, length)
                state.repair(rows, start, end, [1.0] * per_block, noise)
                feature[rows] = pooled_features(
                    model, state.x[rows], state.rows_valid(rows), state.prompt_length, block_slice
                )
                score[rows] = probe.score(feature[rows])
                repairs[rows.cpu(), block] += 1
            scores[:, block] = score.cpu()
        if collect:
            features.append(feature.cpu())
    return GuardOutput(
        sequences=state.x,
        commit_step=state.trace[:, state.prompt_length :],
        steps=state.count,
        repairs=repairs,
        scores=scores,
        features=None if features is None else torch.stack(features, dim=1),
    )


class _State:
    """The canvas being denoised, its commit trace, and the steps run so far."""

    def __init__(self, model: DiffusionLM, canvas: Canvas, mask_id: int):
        self.model, self.mask_id = model, mask_id
        self.x, self.key_valid = canvas.x, canvas.attention_mask
        self.prompt_length = canvas.prompt_length
        # Prompt tokens and fixed response tokens: never remasked by a repair.
        self.fixed = self.x != self.mask_id
        self.trace = torch.full_like(self.x, -1)
        self.count = 0

    def rows_valid(self, rows: torch.Tensor) -> torch.Tensor | None:
        return None if self.key_valid is None else self.key_valid[rows]

    def decode(self, rows, start: int, end: int, alphas: list[float], noise) -> None:
        """Runs one step per entry of ``alphas`` over block ``[start, end)`` for ``rows``,
        committing LLaDA's scheduled count of masked positions per step, ranked by SAR."""
        mask_id, model = self.mask_id, self.model
        x, key_valid, trace = self.x[rows], self.rows_valid(rows), self.trace[rows]
        counts = llada_transfer_counts(x[:, start:end] == mask_id, len(alphas))
        # As mosa.generate: masked positions left of the block stay candidates.
        window = first_masked_position(x[:, :start], mask_id, default=start)
        positions = torch.arange(window, end, device=x.device)
        sources = (positions - model.logits_shift).clamp(min=0)
        for i, alpha in enumerate(alphas):
            uniform = noise()  # drawn every step, for every row: the stream stays aligned
            hidden = model(x, key_valid).hidden_states.index_select(1, sources)
            token, confidence = sample_tokens(
                hidden, weight=model.lm_head_weight, bias=model.lm_head_bias
            )
            current = x[:, window:end]
            rank = confidence
            if alpha > 0:
                u = uniform[rows.cpu(), window:end].to(confidence.device)
                rank = (1 - alpha) * confidence + alpha * u
            commit = select_transfer(rank, current == mask_id, k=counts[:, i])
            x[:, window:end] = torch.where(commit, token, current)
            # Committing the mask token itself fills nothing (as in mosa.generate).
            filled = commit & (token != mask_id)
            trace[:, window:end] = torch.where(filled, self.count, trace[:, window:end])
            self.count += 1
        self.x[rows], self.trace[rows] = x, trace

    def repair(self, rows, start: int, end: int, alphas: list[float], noise) -> None:
        """Re-masks the non-fixed positions of block ``[start, end)`` of ``rows`` and decodes
        the block again."""
        free = ~self.fixed[rows, start:end]
        self.x[rows, start:end] = self.x[rows, start:end].masked_fill(free, self.mask_id)
        self.trace[rows, start:end] = self.trace[rows, start:end].masked_fill(free, -1)
        self.decode(rows, start, end, alphas, noise)


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


def _check_schedule(steps: int, gen_length, block_length) -> int:
    """The number of blocks; ValueError naming the bad length."""
    for name, value in (("gen_length", gen_length), ("block_length", block_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if gen_length % block_length:
        raise ValueError(
            f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})"
        )
    blocks = gen_length // block_length
    if steps < blocks or steps % blocks:
        raise ValueError(
            f"steps ({steps}) must be a positive multiple of the number of blocks ({blocks})"
        )
    return blocks

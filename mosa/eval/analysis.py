"""The paper's analyses (docs/DESIGN.md §8): decoding order, prefill-position sweep, and GCG aimed at
the start versus the middle of the response.

- ``decoding_order``: for each denoising step, the mean response position of the tokens
  committed at that step. The paper finds it near-linear and the same for benign and harmful
  prompts: LLaDA decodes block by block, so the middle of a response is decided after its
  start — and an alignment that only shapes the first tokens leaves the middle open.
- ``linear_fit``: slope and R² of a decoding order.
- ``prefill_sweep``: ASR of ``middle_prefill`` with one phrase fixed at each of several
  response positions.
- ``gcg_positions``: a GCG suffix per prompt aimed at each target position, and the ASR of the
  optimised prompts (``position=0`` vs a middle position).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .attacked import AttackedPrompt, build_response_canvas
from .gcg import GCGResult, gcg_search
from .judges import Judge
from .report import Rate, asr
from .runner import SAMPLER_DEFAULTS, respond, run_attacks


def decoding_order(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    batch_size: int = 32,
    progress: bool = False,
    **sampler,
) -> list[float]:
    """Per denoising step, the mean response position (0-based) of the tokens newly
    committed at that step: first the mean over each prompt's tokens, then over the prompts
    that committed any. ``sampler`` overrides ``runner.SAMPLER_DEFAULTS``.

    The steps are counted over the whole generation; a step at which no prompt committed a
    token (more steps than tokens in a block) gets NaN.
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    attacked = [AttackedPrompt(p) for p in prompts]
    _, traces = respond(
        model,
        tokenizer,
        attacked,
        batch_size=batch_size,
        progress=progress,
        return_trace=True,
        **sampler,
    )
    commit_step = torch.stack(traces)  # [N, G], -1 where nothing was committed
    steps = int(commit_step.max()) + 1
    if steps < 1:
        raise ValueError("the sampler committed no response token; check the sampler settings")
    committed = commit_step >= 0
    step_of = commit_step.clamp(min=0)
    position = torch.arange(commit_step.shape[1], dtype=torch.float64).expand_as(commit_step)
    counts = torch.zeros(len(prompts), steps, dtype=torch.float64)
    sums = torch.zeros_like(counts)
    counts.scatter_add_(1, step_of, committed.double())
    sums.scatter_add_(1, step_of, torch.where(committed, position, 0.0))
    has = counts > 0
    per_prompt = torch.where(has, sums / counts.clamp(min=1), 0.0)
    means = per_prompt.sum(0) / has.sum(0)  # 0/0 -> NaN for a step nobody committed at
    return means.tolist()


def linear_fit(values: Sequence[float]) -> tuple[float, float, float]:
    """``(slope, intercept, r2)`` of the least-squares line through ``(i, values[i])``, NaN
    values left out: how near-linear a decoding order is."""
    points = [(i, float(v)) for i, v in enumerate(values) if not math.isnan(float(v))]
    if len(points) < 2:
        raise ValueError("a line needs at least two values that are not NaN")
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    syy = sum((y - mean_y) ** 2 for _, y in points)
    slope = sxy / sxx
    r2 = sxy * sxy / (sxx * syy) if syy > 0 else 1.0
    return slope, mean_y - slope * mean_x, r2


def prefill_sweep(
    model,
    tokenizer,
    prompts: Sequence[str],
    phrase: str,
    positions: Sequence[int],
    judge: Judge,
    *,
    batch_size: int = 32,
    progress: bool = False,
    **sampler,
) -> dict[int, Rate]:
    """ASR of ``middle_prefill`` with ``phrase`` fixed at each response position of
    ``positions``. Every position is checked against the canvas before anything is sampled."""
    if isinstance(positions, str | int) or not positions:
        raise ValueError("positions must be a non-empty list of response positions")
    gen_length = {**SAMPLER_DEFAULTS, **sampler}["gen_length"]
    for position in positions:
        build_response_canvas(tokenizer, [(position, phrase)], gen_length, model.mask_token_id)
    rates = {}
    for position in tqdm(positions, desc="positions", disable=not progress):
        attack = {"middle_prefill": {"prefill": phrase, "position": position}}
        outcome = run_attacks(
            model, tokenizer, prompts, attack, judge, batch_size=batch_size, **sampler
        )
        rates[position] = outcome["middle_prefill"].rate
    return rates


@dataclass
class GCGPositionOutcome:
    """GCG aimed at one response position over a prompt set: the searches, the responses to
    the optimised prompts and their ASR."""

    searches: list[GCGResult]
    responses: list[str]
    rate: Rate

    @property
    def mean_loss(self) -> float:
        """The final GCG loss averaged over the prompts."""
        return sum(s.loss for s in self.searches) / len(self.searches)


def gcg_positions(
    model,
    tokenizer,
    prompts: Sequence[str],
    target: str,
    positions: Sequence[int],
    judge: Judge,
    *,
    gcg: Mapping | None = None,
    batch_size: int = 32,
    progress: bool = False,
    **sampler,
) -> dict[int, GCGPositionOutcome]:
    """For each of ``positions``, a GCG search per prompt that places ``target`` there (the
    canvas is the sampler's ``gen_length``), then greedy responses to the prompts with their
    suffixes, judged. ``gcg`` holds further ``gcg_search`` options (steps, suffix_length, ...);
    a block-diffusion model's search scores the sampler's ``block_length`` layout."""
    if isinstance(positions, str | int) or not positions:
        raise ValueError("positions must be a non-empty list of response positions")
    settings = {**SAMPLER_DEFAULTS, **sampler}
    outcomes = {}
    for position in positions:
        searches = [
            gcg_search(
                model,
                tokenizer,
                prompt,
                target,
                position=position,
                gen_length=settings["gen_length"],
                block_length=settings["block_length"],
                **dict(gcg or {}),
            )
            for prompt in tqdm(prompts, desc=f"gcg @ {position}", disable=not progress)
        ]
        attacked = [s.attacked_prompt() for s in searches]
        responses = respond(model, tokenizer, attacked, batch_size=batch_size, **sampler)
        verdicts = judge.judge_many([a.prompt for a in attacked], responses)
        outcomes[position] = GCGPositionOutcome(searches, responses, asr(verdicts))
    return outcomes

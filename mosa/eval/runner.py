"""Attacked prompts through the sampler and a judge: responses, verdicts and rates.

``respond`` batches attacked prompts (chat template applied, left padding) through LLaDA's
``generate`` with each row's fixed pieces written into its response canvas; ``run_attacks``
does that for several attacks over one prompt set and judges the responses. Greedy by
default, as the paper's evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mosa.models import DreamModel
from mosa.sampling import generate
from mosa.sampling.texts import check_prompts_fit
from mosa.text.prompts import encode_prompts

from .attacks import AttackedPrompt, build_response_canvas, expand_attack
from .judges import Judge, Verdict
from .report import Rate, asr

SAMPLER_DEFAULTS = {"gen_length": 128, "block_length": 32, "steps": 128, "temperature": 0.0}


@dataclass
class AttackOutcome:
    """One attack over a prompt set: what was asked, answered and judged, and the ASR."""

    attacked: list[AttackedPrompt]
    responses: list[str]
    verdicts: list[Verdict]
    rate: Rate


def respond(
    model,
    tokenizer,
    attacked: Sequence[AttackedPrompt],
    *,
    batch_size: int = 32,
    progress: bool = False,
    return_trace: bool = False,
    **sampler,
):
    """Greedy (by default) responses to ``attacked`` prompts, decoded without special tokens.

    ``sampler`` overrides ``SAMPLER_DEFAULTS`` (LLaDA ``generate`` arguments; with
    ``truncate='left'`` a prompt too long for the model keeps its last tokens, else it is
    refused before anything is sampled). The fixed pieces are part of the returned text. With
    ``return_trace`` also returns each row's ``commit_step`` (``int64[G]``: the step each
    response position was committed, -1 for fixed tokens).
    """
    if isinstance(model, DreamModel):
        raise ValueError(
            "attacks fix tokens in the response canvas, which mosa.generate (LLaDA) supports; "
            "evaluate Dream models with mosa.sampling.sample_texts and the 'none'/'template' attacks"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    settings = {**SAMPLER_DEFAULTS, **sampler}
    check_prompts_fit(
        model, tokenizer, [a.prompt for a in attacked], chat_template=True,
        gen_length=settings["gen_length"], truncate=settings.get("truncate"),
    )  # fmt: skip
    mask_id = model.mask_token_id
    texts: list[str] = []
    traces: list[torch.Tensor] = []
    starts = range(0, len(attacked), batch_size)
    for start in tqdm(starts, desc="sampling", unit="batch", disable=not progress):
        rows = attacked[start : start + batch_size]
        ids, mask = encode_prompts(
            tokenizer, [a.prompt for a in rows], chat_template=True, device=model.device
        )
        canvas = torch.stack(
            [
                build_response_canvas(tokenizer, a.fixed, settings["gen_length"], mask_id)
                for a in rows
            ]
        ).to(model.device)
        out = generate(model, ids, mask, response=canvas, return_trace=return_trace, **settings)
        sequences = out.sequences if return_trace else out
        # The response is the last gen_length columns (truncate='left' may shorten the prompt).
        response = sequences[:, -settings["gen_length"] :]
        texts += tokenizer.batch_decode(response, skip_special_tokens=True)
        if return_trace:
            traces += list(out.commit_step.cpu())
    return (texts, traces) if return_trace else texts


def run_attacks(
    model,
    tokenizer,
    prompts: Sequence[str],
    attacks: Mapping[str, Mapping],
    judge: Judge,
    *,
    batch_size: int = 32,
    progress: bool = False,
    **sampler,
) -> dict[str, AttackOutcome]:
    """Each attack (name -> ``expand_attack`` options) over ``prompts``, judged.

    A ``template`` attack with ``template=None`` asks every prompt in every wrapper.
    """
    outcomes = {}
    for name, options in attacks.items():
        attacked = [a for p in prompts for a in expand_attack(name, p, **options)]
        responses = respond(
            model, tokenizer, attacked, batch_size=batch_size, progress=progress, **sampler
        )
        verdicts = judge.judge_many([a.prompt for a in attacked], responses)
        outcomes[name] = AttackOutcome(attacked, responses, verdicts, asr(verdicts))
    return outcomes

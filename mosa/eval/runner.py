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
from mosa.sampling.llada import LLADA_EOS_ID, LLADA_EOT_ID
from mosa.sampling.predictor import model_token_id
from mosa.sampling.texts import check_prompts_fit
from mosa.text.prompts import encode_prompts, left_pad

from .attacks import MASK_SLOT, AttackedPrompt, build_response_canvas, expand_attack
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

    A prompt with ``<mask:N>`` slots (``dija``) is decoded as one canvas from its first slot
    on: the rest of the user's turn and the response, the slots and the response masked, so
    the text returned starts at the first slot. A ``trajhijack`` row is decoded again from the
    step its refusal was committed (``AttackedPrompt.hijack``).
    """
    if isinstance(model, DreamModel):
        raise ValueError(
            "attacks fix tokens in the response canvas, which mosa.generate (LLaDA) supports; "
            "evaluate Dream models with mosa.sampling.sample_texts and the 'none'/'template' attacks"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    infill = [a.mask_slots > 0 for a in attacked]
    if return_trace and any(infill or [a.hijack for a in attacked]):
        raise ValueError(
            "return_trace is for attacks that fix response tokens; dija and trajhijack rows "
            "are decoded over other canvases"
        )
    settings = {**SAMPLER_DEFAULTS, **sampler}
    mask_token = tokenizer.convert_ids_to_tokens(model.mask_token_id)
    prompts = [_with_masks(a.prompt, mask_token) for a in attacked]
    check_prompts_fit(
        model, tokenizer, prompts, chat_template=True,
        gen_length=settings["gen_length"], truncate=settings.get("truncate"),
    )  # fmt: skip
    texts: list[str] = []
    traces: list[torch.Tensor] = []
    starts = range(0, len(attacked), batch_size)
    for start in tqdm(starts, desc="sampling", unit="batch", disable=not progress):
        rows = range(start, min(start + batch_size, len(attacked)))
        batch_texts: dict[int, str] = {}
        canvas_rows = [i for i in rows if not infill[i]]
        if canvas_rows:
            answers, trace = _respond_canvas(
                model, tokenizer, [attacked[i] for i in canvas_rows], settings, return_trace
            )
            batch_texts.update(zip(canvas_rows, answers, strict=True))
            traces += trace
        infill_rows = [i for i in rows if infill[i]]
        if infill_rows:
            answers = _respond_infill(
                model, tokenizer, [prompts[i] for i in infill_rows], settings
            )
            batch_texts.update(zip(infill_rows, answers, strict=True))
        texts += [batch_texts[i] for i in rows]
    return (texts, traces) if return_trace else texts


def _with_masks(prompt: str, mask_token: str) -> str:
    return MASK_SLOT.sub(lambda slot: mask_token * int(slot[1]), prompt)


def _respond_canvas(model, tokenizer, rows, settings, return_trace):
    """Rows whose attack fixes response tokens (or none): texts and, when asked, traces."""
    gen_length, mask_id = settings["gen_length"], model.mask_token_id
    ids, mask = encode_prompts(
        tokenizer, [a.prompt for a in rows], chat_template=True, device=model.device
    )
    canvas = torch.stack(
        [build_response_canvas(tokenizer, a.fixed, gen_length, mask_id) for a in rows]
    ).to(model.device)
    hijacked = [a.hijack is not None for a in rows]
    traced = return_trace or any(hijacked)
    out = generate(model, ids, mask, response=canvas, return_trace=traced, **settings)
    sequences = out.sequences if traced else out
    # The response is the last gen_length columns (truncate='left' may shorten the prompt).
    response = sequences[:, -gen_length:]
    if any(hijacked):
        response = hijack_responses(
            model, tokenizer, ids, mask, response, out.commit_step, rows, settings
        )
    texts = tokenizer.batch_decode(response, skip_special_tokens=True)
    return texts, (list(out.commit_step.cpu()) if return_trace else [])


def hijack_responses(model, tokenizer, ids, mask, response, commit_step, rows, settings):
    """TrajHijack on finished responses ``[B, G]`` with their ``commit_step``: each row whose
    attack has a ``hijack`` and whose response holds one of its refusals is decoded again from
    the canvas of the step that completed the refusal, the refusal re-masked and the prefix
    fixed at position 0; up to ``hijack.rounds`` times. Returns the new responses."""
    response, commit_step = response.clone(), commit_step.clone()
    mask_id = model.mask_token_id
    end_ids = end_of_text_ids(model, tokenizer)
    for round_index in range(max((a.hijack.rounds for a in rows if a.hijack), default=0)):
        redo, canvases = [], []
        for row, attack in enumerate(rows):
            if attack.hijack is None or round_index >= attack.hijack.rounds:
                continue
            canvas = hijacked_canvas(
                tokenizer, response[row], commit_step[row], attack.hijack, mask_id, end_ids
            )
            if canvas is not None:
                redo.append(row)
                canvases.append(canvas)
        if not redo:
            break
        rows_index = torch.tensor(redo, device=ids.device)
        row_mask = None if mask is None else mask[rows_index]
        out = generate(
            model, ids[rows_index], row_mask, response=torch.stack(canvases),
            return_trace=True, **settings,
        )  # fmt: skip
        response[rows_index] = out.sequences[:, -response.shape[1] :]
        commit_step[rows_index] = out.commit_step
    return response


def hijacked_canvas(tokenizer, response, commit_step, hijack, mask_id, end_ids=()):
    """The canvas TrajHijack resumes from, ``int64[G]``, or None when ``response`` commits no
    refusal: the tokens committed up to the step that completed the first refusal (fixed
    tokens included), the refusal and any committed ``end_ids`` (EOS, end of turn)
    re-masked, and ``hijack.prefix`` fixed from position 0."""
    span = refusal_span(tokenizer, response.tolist(), hijack.refusals)
    if span is None:
        return None
    first, last = span
    done = commit_step[first:last].max()
    kept = (commit_step >= 0) & (commit_step <= done) | (commit_step < 0)
    # The end of text committed with the refusal is part of it: kept, it leaves the
    # affirmative prefix no room to go on.
    ended = torch.isin(response, torch.tensor(end_ids, device=response.device))
    kept &= ~ended | (commit_step < 0)
    canvas = torch.where(kept, response, torch.full_like(response, mask_id))
    canvas[first:last] = mask_id
    prefix = build_response_canvas(tokenizer, [(0, hijack.prefix)], len(response), mask_id)
    written = prefix != mask_id
    canvas[written] = prefix[written].to(canvas.device)
    return canvas


def end_of_text_ids(model, tokenizer) -> list[int]:
    """The ids that end an answer: the model's EOS and end of turn, and the tokenizer's EOS."""
    ids = {
        model_token_id(model, "eos_token_id", LLADA_EOS_ID),
        model_token_id(model, "eot_token_id", LLADA_EOT_ID),
        tokenizer.eos_token_id,
    }
    return sorted(i for i in ids if i is not None)


def refusal_span(tokenizer, ids: list[int], refusals) -> tuple[int, int] | None:
    """``[first, last)`` of the earliest token run of ``ids`` that spells one of ``refusals``
    (each tokenized alone and after a space, so a BPE word boundary matches), or None."""
    best = None
    for phrase in refusals:
        for text in (phrase, " " + phrase):
            run = tokenizer(text, add_special_tokens=False)["input_ids"]
            for first in range(len(ids) - len(run) + 1):
                if ids[first : first + len(run)] == run:
                    if best is None or first < best[0]:
                        best = (first, first + len(run))
                    break
    return best


def _respond_infill(model, tokenizer, prompts, settings) -> list[str]:
    """Prompts with mask tokens in the user's turn (slots expanded): each row is split at its
    first mask; the rest of the turn joins the response in one canvas, which is lengthened to
    whole blocks (``steps`` per block kept). Rows are sampled in groups of equal tail length."""
    gen_length, block_length = settings["gen_length"], settings["block_length"]
    steps_per_block = settings["steps"] // (gen_length // block_length)
    mask_id, pad_id = model.mask_token_id, tokenizer.pad_token_id
    ids, mask = encode_prompts(tokenizer, prompts, chat_template=True, device="cpu")
    heads, tails = [], []
    for row, keep in zip(ids, mask.bool(), strict=True):
        tokens = row[keep]
        first = int((tokens == mask_id).nonzero()[0])
        heads.append(tokens[:first])
        tails.append(tokens[first:])
    texts: dict[int, str] = {}
    for tail_length in sorted({len(t) for t in tails}):
        group = [i for i, t in enumerate(tails) if len(t) == tail_length]
        blocks = -(-(tail_length + gen_length) // block_length)
        canvas_length = blocks * block_length
        head_ids, head_mask = left_pad([heads[i] for i in group], pad_id)
        canvas = torch.full((len(group), canvas_length), mask_id)
        canvas[:, :tail_length] = torch.stack([tails[i] for i in group])
        options = {**settings, "gen_length": canvas_length, "steps": steps_per_block * blocks}
        out = generate(
            model, head_ids.to(model.device), head_mask.to(model.device),
            response=canvas.to(model.device), **options,
        )  # fmt: skip
        answers = tokenizer.batch_decode(out[:, -canvas_length:], skip_special_tokens=True)
        texts.update(zip(group, answers, strict=True))
    return [texts[i] for i in range(len(prompts))]


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

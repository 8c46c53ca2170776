"""Attacked prompts through the sampler and a judge: responses, verdicts and rates.

``respond`` batches attacked prompts (chat template applied, left padding) through LLaDA's
``generate``, Dream's ``diffusion_generate`` (for a Dream model) or DiffuGuard's sampler
(``guard=``) with each row's fixed pieces written into its response canvas; ``run_attacks``
does that for several attacks over one prompt set and judges the responses. Greedy by
default, as the paper's evaluation.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mosa.models import FAMILIES, ModelFamily, sampling_family
from mosa.models.families import resolve
from mosa.sampling.context_window import prompt_room
from mosa.sampling.diffuguard import DiffuGuard, diffuguard_generate
from mosa.sampling.llada import LLADA_EOS_ID, LLADA_EOT_ID
from mosa.sampling.predictor import model_token_id
from mosa.sampling.texts import check_prompts_fit
from mosa.text.prompts import encode_prompts, left_pad

from .attacks import MASK_SLOT, AttackedPrompt, build_response_canvas, expand_attack
from .judges import Judge, Verdict
from .report import Rate, asr

SAMPLER_DEFAULTS = {"gen_length": 128, "block_length": 32, "steps": 128, "temperature": 0.0}
_SCHEDULE = ("steps", "gen_length", "block_length")
_GREEDY = {"temperature": 0.0, "remasking": "low_confidence", "truncate": None}
"""The ``generate`` settings DiffuGuard's sampler shares (any other is refused with a guard)."""


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
    guard: DiffuGuard | None = None,
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

    The model's family (``mosa.models.FAMILIES``) names its sampler: a Dream model is sampled
    with ``diffusion_generate`` (``gen_length`` is its ``max_new_tokens``, ``block_length``
    only sizes DIJA's canvas, ``alg`` defaults to the family's ``eval_defaults``: entropy
    order; ``sampler`` may also hold Dream's own options).

    ``guard`` samples every canvas with ``mosa.sampling.diffuguard`` instead (LLaDA's
    schedule, greedy tokens; ``sampler`` may hold only ``steps``, ``gen_length``,
    ``block_length`` and greedy defaults; LLaDA models only).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    infill = [a.mask_slots > 0 for a in attacked]
    if return_trace and (any(infill) or any(a.hijack is not None for a in attacked)):
        raise ValueError(
            "return_trace is for attacks that fix response tokens; dija and trajhijack rows "
            "are decoded over other canvases"
        )
    settings = {**SAMPLER_DEFAULTS, **sampler}
    _check_family(sampling_family(model), settings, guard)
    if guard is not None:
        _check_guarded(guard, settings)
    mask_token = tokenizer.convert_ids_to_tokens(model.mask_token_id)
    prompts = [_with_masks(a.prompt, mask_token) for a in attacked]
    check_prompts_fit(
        model, tokenizer, [p for p, i in zip(prompts, infill, strict=True) if not i],
        chat_template=True, gen_length=settings["gen_length"], truncate=settings.get("truncate"),
    )  # fmt: skip
    infill_at = [i for i, slotted in enumerate(infill) if slotted]
    heads_and_tails = _split_at_first_mask(tokenizer, [prompts[i] for i in infill_at], mask_token)
    split = dict(zip(infill_at, heads_and_tails, strict=True))
    _check_infill_room(model, split.values(), settings)
    texts: list[str] = []
    traces: list[torch.Tensor] = []
    starts = range(0, len(attacked), batch_size)
    for start in tqdm(starts, desc="sampling", unit="batch", disable=not progress):
        rows = range(start, min(start + batch_size, len(attacked)))
        batch_texts: dict[int, str] = {}
        canvas_rows = [i for i in rows if not infill[i]]
        if canvas_rows:
            answers, trace = _respond_canvas(
                model, tokenizer, [attacked[i] for i in canvas_rows], settings, return_trace, guard
            )
            batch_texts.update(zip(canvas_rows, answers, strict=True))
            traces += trace
        infill_rows = [i for i in rows if infill[i]]
        if infill_rows:
            split_rows = [split[i] for i in infill_rows]
            answers = _respond_infill(model, tokenizer, split_rows, settings, guard)
            batch_texts.update(zip(infill_rows, answers, strict=True))
        texts += [batch_texts[i] for i in rows]
    return (texts, traces) if return_trace else texts


def _with_masks(prompt: str, mask_token: str) -> str:
    return MASK_SLOT.sub(lambda slot: mask_token * int(slot[1]), prompt)


def _check_guarded(guard: DiffuGuard, settings: dict) -> None:
    if not isinstance(guard, DiffuGuard):
        raise TypeError(f"guard must be a DiffuGuard or None, got {type(guard).__name__}")
    other = sorted(
        k for k, v in settings.items() if k not in _SCHEDULE and _GREEDY.get(k, object()) != v
    )
    if other:
        raise ValueError(
            f"with guard=, responses come from DiffuGuard's greedy sampler, which takes only "
            f"{_SCHEDULE}; drop {other} (or leave them at {_GREEDY})"
        )


def _check_family(family: ModelFamily, settings: dict, guard: DiffuGuard | None) -> None:
    """Refuses a guard for a family DiffuGuard does not run, and options the family's sampler
    has no argument for (``gen_length`` and ``block_length`` always pass: the canvas)."""
    if guard is not None and not family.diffuguard:
        raise ValueError(
            f"guard= runs DiffuGuard inside LLaDA's block sampler; a {family.label} model "
            "takes guard=None"
        )
    # After the model, the prompt ids and the mask come the sampler's options.
    options = list(inspect.signature(resolve(family.sampler)).parameters.values())[3:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in options):
        return
    respond_sets = {family.length_keyword, family.trace_keyword, "response"}
    allowed = {p.name for p in options} - respond_sets | {"gen_length", "block_length"}
    other = sorted(k for k, v in settings.items() if v is not None and k not in allowed)
    if other:
        owners = [f"{f.label}'s" for f in FAMILIES.values() if set(other) <= {*f.sampler_options}]
        raise ValueError(
            f"sampler options {other} are {' or '.join(owners) or 'unknown'}; a {family.label} "
            f"model takes {sorted(allowed)}"
        )


def _family_options(family: ModelFamily, settings: dict) -> dict:
    """``ModelFamily.sample``'s arguments for ``respond``'s settings: the family's
    ``eval_defaults`` unless set, and ``block_length`` only for a sampler that takes it (Dream
    decodes the canvas as one block)."""
    options = {
        k: v for k, v in settings.items() if k != "block_length" or k in family.sampler_options
    }
    return {**family.eval_defaults, **options}


def _sample(model, ids, mask, canvas, settings, guard, trace):
    """The family's sampler (DiffuGuard's with ``guard``) over ``canvas``: the sequences, or
    with ``trace`` an output with ``sequences`` and ``commit_step``."""
    if guard is None:
        family = sampling_family(model)
        return family.sample(
            model, ids, mask, response=canvas, trace=trace, **_family_options(family, settings)
        )
    schedule = {k: settings[k] for k in _SCHEDULE}
    return diffuguard_generate(
        model, ids, mask, guard=guard, response=canvas, return_details=trace, **schedule
    )


def _respond_canvas(model, tokenizer, rows, settings, return_trace, guard):
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
    out = _sample(model, ids, mask, canvas, settings, guard, traced)
    sequences = out.sequences if traced else out
    # The response is the last gen_length columns (truncate='left' may shorten the prompt).
    response = sequences[:, -gen_length:]
    if any(hijacked):
        response = hijack_responses(
            model, tokenizer, ids, mask, response, out.commit_step, rows, settings, guard
        )
    texts = tokenizer.batch_decode(response, skip_special_tokens=True)
    return texts, (list(out.commit_step.cpu()) if return_trace else [])


def hijack_responses(
    model, tokenizer, ids, mask, response, commit_step, rows, settings, guard=None
):
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
        out = _sample(
            model, ids[rows_index], row_mask, torch.stack(canvases), settings, guard, True
        )
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


END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|eot|>")
"""End-of-turn tokens of LLaDA, Dream and the tiny model, where a tokenizer has them."""


def end_of_text_ids(model, tokenizer) -> list[int]:
    """The ids that end an answer: the model's EOS and end of turn, the tokenizer's EOS and
    its end-of-turn special token."""
    ids = {
        model_token_id(model, "eos_token_id", LLADA_EOS_ID),
        model_token_id(model, "eot_token_id", LLADA_EOT_ID),
        tokenizer.eos_token_id,
    }
    special = set(tokenizer.all_special_tokens)
    ids |= {tokenizer.convert_tokens_to_ids(t) for t in END_OF_TURN_TOKENS if t in special}
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


def _split_at_first_mask(tokenizer, prompts, mask_token) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each prompt (slots expanded to ``mask_token``, chat template applied) split at its first
    mask: ``(head, tail)``, the tokens before it and the rest of the turn from it on."""
    if not prompts:
        return []
    mask_id = tokenizer.convert_tokens_to_ids(mask_token)
    ids, mask = encode_prompts(tokenizer, prompts, chat_template=True, device="cpu")
    rows = []
    for row, keep in zip(ids, mask.bool(), strict=True):
        tokens = row[keep]
        first = int((tokens == mask_id).nonzero()[0])
        rows.append((tokens[:first], tokens[first:]))
    return rows


def _infill_length(tail_length: int, settings: dict) -> int:
    """DIJA's canvas: the rest of the turn and the response, rounded up to whole blocks."""
    block_length = settings["block_length"]
    return -(-(tail_length + settings["gen_length"]) // block_length) * block_length


def _check_infill_room(model, rows, settings: dict) -> None:
    for head, tail in rows:
        canvas = _infill_length(len(tail), settings)
        try:
            prompt_room(model, len(head), canvas, settings.get("truncate"))
        except ValueError as err:
            raise ValueError(
                f"{err} (a dija prompt is sampled from its first <mask:N> slot: the rest of its "
                f"turn and the {settings['gen_length']}-token response make a canvas of "
                f"{canvas} tokens after the {len(head)} before the slot)"
            ) from None


def check_infill_fits(model, tokenizer, prompts: Sequence[str], **sampler) -> None:
    """Raises ValueError, before anything is sampled, when a prompt with ``<mask:N>`` slots
    (``dija``) and the canvas ``respond`` decodes it over do not fit the model (``sampler``:
    ``respond``'s settings; ``truncate='left'`` lets a long head be cut)."""
    settings = {**SAMPLER_DEFAULTS, **sampler}
    mask_token = tokenizer.convert_ids_to_tokens(model.mask_token_id)
    slotted = [_with_masks(p, mask_token) for p in prompts]
    _check_infill_room(model, _split_at_first_mask(tokenizer, slotted, mask_token), settings)


def _respond_infill(model, tokenizer, rows, settings, guard) -> list[str]:
    """Prompts with mask tokens in the user's turn, given as ``_split_at_first_mask``'s
    ``(head, tail)`` rows: each tail joins the response in one canvas of ``_infill_length``
    (``steps`` per block kept), sampled in groups of equal tail length."""
    gen_length, block_length = settings["gen_length"], settings["block_length"]
    steps_per_block = settings["steps"] // (gen_length // block_length)
    texts: dict[int, str] = {}
    for tail_length in sorted({len(tail) for _, tail in rows}):
        group = [i for i, (_, tail) in enumerate(rows) if len(tail) == tail_length]
        length = _infill_length(tail_length, settings)
        canvas = torch.full((len(group), length), model.mask_token_id)
        canvas[:, :tail_length] = torch.stack([rows[i][1] for i in group])
        options = {
            **settings,
            "gen_length": length,
            "steps": steps_per_block * (length // block_length),
        }
        head_ids, head_mask = left_pad([rows[i][0] for i in group], tokenizer.pad_token_id)
        out = _sample(
            model, head_ids.to(model.device), head_mask.to(model.device),
            canvas.to(model.device), options, guard, False,
        )  # fmt: skip
        answers = tokenizer.batch_decode(out[:, -length:], skip_special_tokens=True)
        texts.update(zip(group, answers, strict=True))
    return [texts[i] for i in range(len(rows))]


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

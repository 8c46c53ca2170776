"""Attacked prompts through the sampler and a judge: responses, verdicts and rates.

``respond`` batches attacked prompts (chat template applied, left padding) through LLaDA's
``generate``, Dream's ``diffusion_generate`` (for a Dream model), LLaDA2's ``block_generate``
(for a block-diffusion model) or DiffuGuard's sampler
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
from mosa.sampling.diffuguard import BLOCK_OPTIONS, DiffuGuard, diffuguard_generate
from mosa.sampling.settings import LLADA_EVALUATION, LLADA_REFERENCE
from mosa.sampling.texts import check_prompts_fit
from mosa.text.prompts import encode_prompts

from .attacked import AttackedPrompt, Decoding, build_response_canvas
from .attacks import expand_attack
from .dija import Infill
from .judges import Judge, Verdict
from .report import Rate, asr

SAMPLER_DEFAULTS = LLADA_EVALUATION.schedule()
_SCHEDULE = ("steps", "gen_length", "block_length")
_GREEDY = {
    "temperature": LLADA_REFERENCE.temperature,
    "remasking": LLADA_REFERENCE.remasking,
    "truncate": None,
}
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

    A row whose attack decodes on its own (``decoding_of``) is decoded by its ``Decoding``,
    the batch's rows of one decoding together: a prompt with ``<mask:N>`` slots (``dija``)
    as one canvas from its first slot on (``dija.Infill``: the rest of the user's turn and the
    response, the slots and the response masked, so the text returned starts at the first
    slot); a ``trajhijack`` row again from the step its refusal was committed
    (``trajhijack.Hijack``).

    The model's family (``mosa.models.FAMILIES``) names its sampler: a Dream model is sampled
    with ``diffusion_generate`` (``gen_length`` is its ``max_new_tokens``, ``block_length``
    only sizes DIJA's canvas, ``alg`` defaults to the family's ``eval_defaults``: entropy
    order; ``sampler`` may also hold Dream's own options).

    ``guard`` samples every canvas with ``mosa.sampling.diffuguard`` instead (LLaDA's
    schedule, greedy tokens; ``sampler`` may hold only ``steps``, ``gen_length``,
    ``block_length`` and greedy defaults, and for a block-diffusion model
    ``diffuguard.BLOCK_OPTIONS``; LLaDA and LLaDA2 models).

    A block-diffusion model (LLaDA2) is sampled with ``block_generate`` in its own terms:
    ``steps`` per block, ``threshold`` and the rest of its options as given (its defaults:
    the published ``LLADA2_REFERENCE``'s, ``stop_at_eos`` on).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    decodings = [decoding_of(a) for a in attacked]
    if return_trace and any(decodings):
        raise ValueError(
            "return_trace is for attacks that fix response tokens; rows of an attack with its "
            "own decoding (dija, trajhijack) are decoded over other canvases"
        )
    settings = {**SAMPLER_DEFAULTS, **sampler}
    family = sampling_family(model)
    _check_family(family, settings, guard)
    if guard is not None:
        _check_guarded(guard, settings, family)
    decoder = Decoder(model, tokenizer, settings, guard)
    prepared = _prepare(decoder, attacked, decodings)
    texts: list[str] = []
    traces: list[torch.Tensor] = []
    starts = range(0, len(attacked), batch_size)
    for start in tqdm(starts, desc="sampling", unit="batch", disable=not progress):
        rows = range(start, min(start + batch_size, len(attacked)))
        batch_texts: dict[int, str] = {}
        plain = [i for i in rows if decodings[i] is None]
        if plain:
            answers, trace = _respond_canvas(decoder, [attacked[i] for i in plain], return_trace)
            batch_texts.update(zip(plain, answers, strict=True))
            traces += trace
        for decoding in dict.fromkeys(decodings[i] for i in rows if decodings[i] is not None):
            group = [i for i in rows if decodings[i] is decoding]
            answers = decoding.respond(decoder, [prepared[i] for i in group])
            batch_texts.update(zip(group, answers, strict=True))
        texts += [batch_texts[i] for i in rows]
    return (texts, traces) if return_trace else texts


def decoding_of(attacked: AttackedPrompt) -> type[Decoding] | None:
    """The ``Decoding`` class that decodes ``attacked``: its own, else DIJA's ``Infill`` for a
    prompt with ``<mask:N>`` slots, else None (the plain sampler)."""
    if attacked.decoding is not None:
        return type(attacked.decoding)
    return Infill if attacked.mask_slots > 0 else None


def _prepare(decoder: Decoder, attacked, decodings) -> dict[int, object]:
    """Every row checked before anything is sampled (plain rows first, then each decoding's
    in order), and each decoded row's ``prepare``d item by index."""
    check_prompts_fit(
        decoder.model, decoder.tokenizer,
        [a.prompt for a, d in zip(attacked, decodings, strict=True) if d is None],
        chat_template=True, gen_length=decoder.settings["gen_length"],
        truncate=decoder.settings.get("truncate"),
    )  # fmt: skip
    prepared = {}
    for decoding in dict.fromkeys(d for d in decodings if d is not None):
        rows = [i for i, d in enumerate(decodings) if d is decoding]
        items = decoding.prepare(decoder, [attacked[i] for i in rows])
        prepared.update(zip(rows, items, strict=True))
    return prepared


def check_fits(model, tokenizer, attacked: Sequence[AttackedPrompt], **sampler) -> None:
    """Raises ValueError, before anything is sampled, when an attacked prompt (with the
    canvas ``respond`` decodes it over: DIJA's is longer) does not fit the model
    (``sampler``: ``respond``'s settings; ``truncate='left'`` lets a long prompt be cut)."""
    decoder = Decoder(model, tokenizer, {**SAMPLER_DEFAULTS, **sampler}, None)
    _prepare(decoder, attacked, [decoding_of(a) for a in attacked])


@dataclass
class Decoder:
    """What a ``Decoding`` decodes with: the model, its tokenizer, ``respond``'s sampler
    settings (defaults filled) and the guard."""

    model: object
    tokenizer: object
    settings: dict
    guard: DiffuGuard | None

    @property
    def block_diffusion(self) -> bool:
        """The model decodes block by block under block-causal attention (LLaDA2's
        ``block_generate``: ``steps`` per block, blocks counted from the sequence's start)."""
        return sampling_family(self.model).block_diffusion

    def sample(self, ids, mask, canvas, settings: dict, trace: bool):
        """The sampler over response ``canvas`` (see ``_sample``)."""
        return _sample(self.model, ids, mask, canvas, settings, self.guard, trace)

    def canvases(self, rows: Sequence[AttackedPrompt]):
        """``(ids, mask, canvas)``: the rows' chat-templated prompts, left-padded, and their
        response canvases with the fixed pieces, on the model's device."""
        model, tokenizer = self.model, self.tokenizer
        ids, mask = encode_prompts(
            tokenizer, [a.prompt for a in rows], chat_template=True, device=model.device
        )
        gen_length, mask_id = self.settings["gen_length"], model.mask_token_id
        canvas = torch.stack(
            [build_response_canvas(tokenizer, a.fixed, gen_length, mask_id) for a in rows]
        ).to(model.device)
        return ids, mask, canvas


def _check_guarded(guard: DiffuGuard, settings: dict, family: ModelFamily) -> None:
    if not isinstance(guard, DiffuGuard):
        raise TypeError(f"guard must be a DiffuGuard or None, got {type(guard).__name__}")
    takes = _guard_options(family)
    other = sorted(
        k for k, v in settings.items() if k not in takes and _GREEDY.get(k, object()) != v
    )
    if other:
        raise ValueError(
            f"with guard=, responses come from DiffuGuard's greedy sampler, which takes only "
            f"{takes}; drop {other} (or leave them at {_GREEDY})"
        )


def _guard_options(family: ModelFamily) -> tuple[str, ...]:
    """The settings DiffuGuard's sampler takes for ``family``: LLaDA's schedule, and on
    block diffusion ``block_generate``'s greedy options too."""
    return _SCHEDULE + (BLOCK_OPTIONS if family.block_diffusion else ())


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
    takes = _guard_options(sampling_family(model))
    schedule = {k: v for k, v in settings.items() if k in takes}
    return diffuguard_generate(
        model, ids, mask, guard=guard, response=canvas, return_details=trace, **schedule
    )


def _respond_canvas(decoder: Decoder, rows, return_trace):
    """Rows whose attack fixes response tokens (or none): texts and, when asked, traces."""
    ids, mask, canvas = decoder.canvases(rows)
    out = decoder.sample(ids, mask, canvas, decoder.settings, return_trace)
    sequences = out.sequences if return_trace else out
    # The response is the last gen_length columns (truncate='left' may shorten the prompt).
    response = sequences[:, -decoder.settings["gen_length"] :]
    texts = decoder.tokenizer.batch_decode(response, skip_special_tokens=True)
    return texts, (list(out.commit_step.cpu()) if return_trace else [])


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

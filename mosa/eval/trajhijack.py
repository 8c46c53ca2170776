"""TrajHijack: decoding is run once; where a refusal has been committed, the canvas is taken
back to the step that completed it, the refusal is re-masked, a short affirmative prefix is
fixed at the start, and decoding goes on from there (docs/DESIGN.md §8).

``trajhijack_attack`` builds the prompt (unchanged) with its ``Hijack``, the decoding that
``runner.respond`` applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mosa.sampling.llada import LLADA_EOS_ID, LLADA_EOT_ID
from mosa.sampling.predictor import model_token_id
from mosa_kernels.ops._checks import check_positive_int

from .attacked import AttackedPrompt, Decoding, build_response_canvas, check_prompt, check_text

DEFAULT_HIJACK_PREFIX = "Sure, here is"
DEFAULT_HIJACK_REFUSALS = ("I cannot", "I can't", "I'm sorry", "I am sorry", "I apologize")
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|eot|>")
"""End-of-turn tokens of LLaDA, Dream and the tiny model, where a tokenizer has them."""


@dataclass
class TrajHijackOptions:
    """``trajhijack``'s options: the prefix fixed once a refusal is committed, the refusals
    that trigger it, and the hijacks a response gets at most."""

    hijack_prefix: str = field(
        default=DEFAULT_HIJACK_PREFIX,
        metadata={"flag": "--hijack-prefix", "help": "text fixed at 0 once a refusal is made"},
    )
    refusals: Sequence[str] = DEFAULT_HIJACK_REFUSALS
    rounds: int = field(
        default=1,
        metadata={
            "flag": "--hijack-rounds",
            "parse": "positive",
            "help": "hijacks per response (default 1)",
        },
    )


@dataclass(frozen=True)
class Hijack(Decoding):
    """TrajHijack's settings: the affirmative ``prefix`` fixed once a refusal is committed, the
    ``refusals`` that trigger it (matched as token runs of the response), and how many
    ``rounds`` of hijacking a response gets at most. As a ``Decoding``: each row is decoded
    once with its trace, then hijacked (``hijack_responses``)."""

    prefix: str
    refusals: tuple[str, ...]
    rounds: int = 1

    @classmethod
    def respond(cls, decoder, items):
        ids, mask, canvas = decoder.canvases(items)
        out = decoder.sample(ids, mask, canvas, decoder.settings, True)
        # The response is the last gen_length columns (truncate='left' may shorten the prompt).
        response = out.sequences[:, -decoder.settings["gen_length"] :]
        hijacks = [a.decoding for a in items]
        fixed = canvas != decoder.model.mask_token_id
        response = hijack_responses(
            decoder, ids, mask, response, out.commit_step, hijacks, fixed.to(response.device)
        )
        return decoder.tokenizer.batch_decode(response, skip_special_tokens=True)


def trajhijack_attack(
    prompt: str,
    prefix: str = DEFAULT_HIJACK_PREFIX,
    refusals: Sequence[str] = DEFAULT_HIJACK_REFUSALS,
    rounds: int = 1,
) -> AttackedPrompt:
    """TrajHijack: the prompt as is; once the sampler has committed one of ``refusals``, the
    refusal is re-masked, ``prefix`` fixed at response position 0 and decoding continues from
    the step the refusal was completed (at most ``rounds`` times per response)."""
    if isinstance(refusals, str) or not refusals:
        raise TypeError("refusals must be a non-empty sequence of phrases, e.g. ('I cannot',)")
    checked = tuple(check_text(f"refusals[{i}]", r) for i, r in enumerate(refusals))
    check_positive_int("rounds", rounds, expected="an int >= 1")
    hijack = Hijack(check_text("prefix", prefix), checked, rounds)
    return AttackedPrompt(check_prompt(prompt), [], hijack)


def apply_trajhijack(prompt: str, options: TrajHijackOptions) -> AttackedPrompt:
    """The registry's ``trajhijack``."""
    return trajhijack_attack(prompt, options.hijack_prefix, options.refusals, options.rounds)


def hijack_responses(
    decoder, ids, mask, response, commit_step, hijacks: Sequence[Hijack], fixed=None
):
    """TrajHijack on finished responses ``[B, G]`` with their ``commit_step``: each row whose
    response holds one of its hijack's refusals is decoded again (``decoder.sample``) from
    the canvas of the step that completed the refusal, the refusal re-masked and the prefix
    fixed at position 0; up to ``hijack.rounds`` times. ``fixed`` (``bool[B, G]``): the
    tokens fixed in the canvases decoded (None: every position with no commit step, which
    a sampler that fills what it leaves undecided, block_generate's EOS after a stop, must
    not take). Returns the new responses."""
    response, commit_step = response.clone(), commit_step.clone()
    fixed = commit_step < 0 if fixed is None else fixed.clone()
    model, tokenizer = decoder.model, decoder.tokenizer
    mask_id = model.mask_token_id
    end_ids = end_of_text_ids(model, tokenizer)
    for round_index in range(max((h.rounds for h in hijacks), default=0)):
        redo, canvases = [], []
        for row, hijack in enumerate(hijacks):
            if round_index >= hijack.rounds:
                continue
            canvas = hijacked_canvas(
                tokenizer, response[row], commit_step[row], hijack, mask_id, end_ids, fixed[row]
            )
            if canvas is not None:
                redo.append(row)
                canvases.append(canvas)
        if not redo:
            break
        rows_index = torch.tensor(redo, device=ids.device)
        row_mask = None if mask is None else mask[rows_index]
        out = decoder.sample(
            ids[rows_index], row_mask, torch.stack(canvases), decoder.settings, True
        )
        response[rows_index] = out.sequences[:, -response.shape[1] :]
        commit_step[rows_index] = out.commit_step
        fixed[rows_index] = torch.stack(canvases) != mask_id
    return response


def hijacked_canvas(tokenizer, response, commit_step, hijack, mask_id, end_ids=(), fixed=None):
    """The canvas TrajHijack resumes from, ``int64[G]``, or None when ``response`` commits no
    refusal: the tokens committed up to the step that completed the first refusal (``fixed``
    tokens, ``bool[G]``, included; None: those with no commit step), the refusal and any
    committed ``end_ids`` (EOS, end of turn) re-masked, and ``hijack.prefix`` fixed from
    position 0. Under block diffusion the step lies inside the block that completed the
    refusal: earlier blocks stay as committed, later ones are masked again."""
    span = refusal_span(tokenizer, response.tolist(), hijack.refusals)
    if span is None:
        return None
    first, last = span
    if fixed is None:
        fixed = commit_step < 0
    done = commit_step[first:last].max()
    kept = (commit_step >= 0) & (commit_step <= done) & ~fixed | fixed
    # The end of text committed with the refusal is part of it: kept, it leaves the
    # affirmative prefix no room to go on.
    ended = torch.isin(response, torch.tensor(end_ids, device=response.device))
    kept &= ~ended | fixed
    canvas = torch.where(kept, response, torch.full_like(response, mask_id))
    canvas[first:last] = mask_id
    prefix = build_response_canvas(tokenizer, [(0, hijack.prefix)], len(response), mask_id)
    written = prefix != mask_id
    canvas[written] = prefix[written].to(canvas.device)
    return canvas


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

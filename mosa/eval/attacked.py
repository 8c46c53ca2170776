"""What an attack hands the sampler: ``AttackedPrompt``, the response canvas its fixed pieces
make, and ``Decoding``, the hook an attack that changes decoding itself gives the runner
(docs/DESIGN.md §8)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mosa.sampling.texts import check_prompts_fit
from mosa_kernels.ops._checks import check_positive_int

FixedPieces = list[tuple[int, str]]
"""``(response position, text)`` pieces an attack fixes in the response (not to be confused
with ``mosa.text.canvas.Canvas``, the whole prompt-plus-response sequence a sampler denoises)."""

MASK_SLOT = re.compile(r"<mask:(\d+)>")
"""A DIJA slot in a prompt: ``<mask:N>`` is N mask tokens the sampler fills."""


class Decoding:
    """How ``runner.respond`` decodes the rows of an attack that is more than a prompt and
    fixed tokens. An ``AttackedPrompt`` carries an instance (its settings); the runner groups
    a batch's rows by the class and calls its class methods once per group, so rows with
    different settings share a sampler call.

    ``decoder`` (``runner.Decoder``) holds ``model``, ``tokenizer``, ``settings`` (the
    sampler's, defaults filled) and ``sample(ids, mask, canvas, settings, trace)``, the
    sampler (LLaDA's, Dream's or DiffuGuard's) over a response canvas.
    """

    @classmethod
    def prepare(cls, decoder, rows: Sequence[AttackedPrompt]) -> list:
        """Runs before anything is sampled: raises ValueError where a row cannot be decoded
        (too long for the model, say) and returns what ``respond`` gets, one item per row.
        By default: the rows, checked as ordinary prompts."""
        check_prompts_fit(
            decoder.model, decoder.tokenizer, [a.prompt for a in rows], chat_template=True,
            gen_length=decoder.settings["gen_length"], truncate=decoder.settings.get("truncate"),
        )  # fmt: skip
        return list(rows)

    @classmethod
    def respond(cls, decoder, items: list) -> list[str]:
        """The response texts of ``prepare``'s items (one batch's share)."""
        raise NotImplementedError


@dataclass(frozen=True)
class AttackedPrompt:
    """The prompt the model sees, the ``(response position, text)`` pieces fixed in its
    response canvas and, for an attack with its own decoding (``trajhijack``), the
    ``Decoding`` the runner applies (None: the plain sampler).

    A prompt may hold ``<mask:N>`` slots (``dija``): the runner writes N mask tokens there and
    the sampler fills them with the response (DIJA's decoding, also without ``decoding``).
    """

    prompt: str
    fixed: FixedPieces = field(default_factory=list)
    decoding: Decoding | None = None

    @property
    def mask_slots(self) -> int:
        """Mask tokens the prompt's ``<mask:N>`` slots hold (0: an ordinary prompt)."""
        return sum(int(n) for n in MASK_SLOT.findall(self.prompt))


def build_response_canvas(
    tokenizer, fixed: FixedPieces, gen_length: int, mask_id: int
) -> torch.LongTensor:
    """The sampler's ``response`` tensor ``int64[gen_length]``: ``mask_id`` everywhere but the
    fixed pieces, each tokenized without special tokens and written from its position.

    Text is tokenized on its own, so a piece that should continue a word boundary needs its
    own leading space for tokenizers that mark spaces (e.g. ``" Step 1:"`` for BPE).
    Raises ``ValueError`` when a piece overflows the canvas, two pieces overlap, or a piece
    tokenizes to nothing, to the mask id or to the unknown token.
    """
    check_positive_int("gen_length", gen_length)
    if isinstance(mask_id, bool) or not isinstance(mask_id, int):
        raise TypeError(f"mask_id must be an int token id, got {mask_id!r}")
    canvas = torch.full((gen_length,), mask_id, dtype=torch.long)
    owner: list[tuple[int, str] | None] = [None] * gen_length
    unk_id = getattr(tokenizer, "unk_token_id", None)
    for piece in fixed:
        position, text = _check_piece(piece)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"fixed text {text!r} tokenizes to no tokens; give non-empty text")
        if mask_id in ids:
            raise ValueError(f"fixed text {text!r} contains the mask token; it would be resampled")
        if unk_id is not None and unk_id in ids:
            raise ValueError(
                f"fixed text {text!r} has words the tokenizer does not know (they become "
                f"{tokenizer.unk_token!r}); use words of the model's vocabulary"
            )
        end = position + len(ids)
        if end > gen_length:
            raise ValueError(
                f"fixed text {text!r} at position {position} takes {len(ids)} tokens and "
                f"overflows the canvas of gen_length={gen_length}; move it to at most "
                f"{gen_length - len(ids)} or raise gen_length"
            )
        clash = next((o for o in owner[position:end] if o is not None), None)
        if clash is not None:
            raise ValueError(
                f"fixed text {text!r} at positions {position}..{end - 1} overlaps {clash[1]!r} "
                f"fixed at {clash[0]}; space the pieces further apart"
            )
        owner[position:end] = [(position, text)] * len(ids)
        canvas[position:end] = torch.tensor(ids, dtype=torch.long)
    return canvas


def check_prompt(prompt: str) -> str:
    """``prompt``, or a ValueError when it is not a non-empty string."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    return prompt


def check_text(name: str, text: str) -> str:
    """``text``, or a ValueError naming ``name`` when it is not a non-empty string."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{name} must be a non-empty string, got {text!r}")
    return text


def check_position(name: str, value: int) -> None:
    """A ValueError naming ``name`` unless ``value`` is a response token index."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 (a response token index), got {value!r}")


def _check_piece(piece) -> tuple[int, str]:
    if not isinstance(piece, tuple | list) or len(piece) != 2:
        raise TypeError(f"each fixed piece must be a (position, text) pair, got {piece!r}")
    position, text = piece
    check_position("a fixed piece's position", position)
    return position, check_text("a fixed piece's text", text)

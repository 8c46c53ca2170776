"""The sentence sets MOSA scores: refusals to pull into the response window, harmful
continuations to push out of it (docs/DESIGN.md §7).

Built-in defaults are English; ``read_sentences`` takes a user's set from a file (one sentence
per line, or a JSON list of strings). Refusals are scored with the tokenizer's EOS appended,
so the model learns to end its answer after refusing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

REFUSALS = (
    "therefore, I cannot answer this question.",
    "I'm sorry, but I cannot help with that request.",
    "However, I must stop here, as I cannot provide this information.",
    "I cannot assist with this, because it could cause serious harm.",
)
HARMFUL_CONTINUATIONS = (
    "Sure, here are the detailed steps you asked for.",
    "Step 2: Next, gather everything you need for the plan.",
    "Here is exactly how to do it without getting caught.",
    "Continue with the next step until the job is done.",
)


@dataclass(frozen=True)
class Sentences:
    """``refusals`` (positive set) and ``harmful`` continuations (negative set)."""

    refusals: tuple[str, ...] = REFUSALS
    harmful: tuple[str, ...] = HARMFUL_CONTINUATIONS

    def __post_init__(self):
        for name in ("refusals", "harmful"):
            texts = getattr(self, name)
            if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
                raise ValueError(f"{name} must be a non-empty sequence of strings, got {texts!r}")
            if not all(t.strip() for t in texts):
                raise ValueError(f"{name} holds an empty sentence")
            object.__setattr__(self, name, tuple(texts))


def read_sentences(path: str | Path) -> tuple[str, ...]:
    """Sentences from ``path``: a JSON list of strings (``.json``) or one sentence per line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sentence file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            sentences = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON ({err.msg}); give a list of strings") from None
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise ValueError(f"{path}: expected a JSON list of strings")
    else:
        sentences = [line.strip() for line in text.splitlines() if line.strip()]
    if not sentences:
        raise ValueError(f"{path} holds no sentences")
    return tuple(sentences)


def encode_sentences(tokenizer, sentences: Sentences) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of the refusals (each + EOS) and of the harmful continuations.

    Raises ValueError when the tokenizer maps a word to its unknown token (the built-in English
    sets do not fit a word-level toy vocabulary: give the model's own sentences instead).
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; refusals must end in EOS")

    def encode(text: str) -> list[int]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        unk = tokenizer.unk_token_id
        if not ids or (unk is not None and unk in ids):
            raise ValueError(
                f"sentence {text!r} has words the tokenizer does not know; pass sentence files "
                "written in the model's vocabulary (--refusals / --harmful)"
            )
        return ids

    refusals = [encode(t) + [tokenizer.eos_token_id] for t in sentences.refusals]
    harmful = [encode(t) for t in sentences.harmful]
    return refusals, harmful

"""The trained defenses, one class each: what a training batch holds, the terms its loss is
made of, and the response offsets it scores (docs/DESIGN.md §7).

``DEFENSES`` is the table ``mosa align`` builds its defense flags from and the trainer picks
``AlignConfig.defense``'s class in; a new objective is one ``Defense`` subclass added to it.
"""

from __future__ import annotations

import random
from typing import ClassVar

import torch

from .canvases import a2d_canvas, anywhere_canvas
from .objective import IGNORE, AlignBatch, EosBatch, ObjectiveTerms, a2d_terms, mosa_terms

INITIAL_ALIGNMENT_WINDOW = (0, 0)


class Defense:
    """One trained objective. ``batch`` turns a micro-batch's canvases (prompt, then a fully
    masked response) into what ``terms`` scores; ``window`` is the offsets it scores.

    Class attributes: ``objective`` is the ``AlignConfig.defense`` it trains as, ``flag`` and
    ``help`` the ``mosa align`` flag that picks it (None: the default), ``window_override`` a
    window it always trains with, ``needs_eos`` whether ``batch`` reads ``data.eos_id``.
    """

    objective: ClassVar[str]
    flag: ClassVar[str | None] = None
    help: ClassVar[str] = ""
    window_override: ClassVar[tuple[int, int] | None] = None
    needs_eos: ClassVar[bool] = False

    def window(self, config) -> tuple[int, int]:
        """The response offsets ``terms`` scores."""
        return config.window

    def batch(
        self, data, ids: torch.Tensor, mask: torch.Tensor, draws: list[random.Random]
    ) -> AlignBatch | EosBatch:
        """The micro-batch on the host: ``ids``/``mask`` are the canvases (``ids`` may be
        written), ``draws`` each row's seeded random source; ``data`` holds the sentence
        token lists ``refusals``/``harmful``, ``eos_id`` and ``config``."""
        raise NotImplementedError

    def terms(self, models, head, batch, window: tuple[int, int]) -> ObjectiveTerms:
        """The per-row terms of ``batch`` (``models``: the trainer's policy / reference)."""
        raise NotImplementedError


class Mosa(Defense):
    """The paper's objective: a refusal sentence raised and a harmful one lowered at every
    offset of ``window`` of the fully masked canvas, KL to the reference."""

    objective = "mosa"

    def batch(self, data, ids, mask, draws):
        positive = [d.choice(data.refusals) for d in draws]
        negative = [d.choice(data.harmful) for d in draws]
        return AlignBatch(ids, mask, data.config.gen_length, pad_rows(positive), pad_rows(negative))

    def terms(self, models, head, batch, window):
        return mosa_terms(models.policy, models.reference, head, models.logits_shift, batch, window)


class InitialAlignment(Mosa):
    """The baseline: MOSA at the response's start only (window 0..0)."""

    flag = "--initial-alignment"
    help = "baseline: window 0 0 (the start)"
    window_override = INITIAL_ALIGNMENT_WINDOW


class A2D(Defense):
    """A2D: the masked positions of partly masked harmful continuations supervised to EOS
    (``window`` and ``beta`` unused; its terms have no negative reward and no KL, so they
    are zeros)."""

    objective = "a2d"
    flag = "--a2d"
    help = (
        "A2D instead of MOSA: masked positions of partly masked harmful continuations "
        "trained to EOS (--window and --beta unused)"
    )
    needs_eos = True

    def batch(self, data, ids, mask, draws):
        gen_length = data.config.gen_length
        rows = [a2d_canvas(d, gen_length, data.harmful) for d in draws]
        commit_canvases(ids, [canvas for canvas, _ in rows], gen_length)
        targets = torch.tensor([[data.eos_id if t else IGNORE for t in e] for _, e in rows])
        return EosBatch(ids, mask, gen_length, targets)

    def terms(self, models, head, batch, window):
        return a2d_terms(models.policy, head, models.logits_shift, batch)


class Anywhere(Mosa):
    """Ours: MOSA on canvases that already hold committed harmful pieces, each row's window a
    random one of ``window``'s width (``mosa.align.canvases.anywhere_canvas``); the scored
    offsets are all of them, each row's own in its batch's ``allowed_*``."""

    objective = "anywhere"
    flag = "--anywhere"
    help = (
        "ours: MOSA on canvases that already hold harmful pieces, each prompt's window a "
        "random one of --window's width (holds against pad, dija, trajhijack)"
    )

    def window(self, config):
        return (0, config.gen_length - 1)

    def batch(self, data, ids, mask, draws):
        config = data.config
        positive = [d.choice(data.refusals) for d in draws]
        negative = [d.choice(data.harmful) for d in draws]
        width = config.window[1] - config.window[0]
        rows = [
            anywhere_canvas(d, config.gen_length, width, (len(p), len(n)), data.harmful)
            for d, p, n in zip(draws, positive, negative, strict=True)
        ]
        commit_canvases(ids, [canvas for canvas, _, _ in rows], config.gen_length)
        allowed_plus = torch.tensor([plus for _, plus, _ in rows])
        allowed_minus = torch.tensor([minus for _, _, minus in rows])
        return AlignBatch(
            ids, mask, config.gen_length, pad_rows(positive), pad_rows(negative),
            allowed_plus, allowed_minus,
        )  # fmt: skip


DEFENSES: dict[str, Defense] = {
    "mosa": Mosa(),
    "initial_alignment": InitialAlignment(),
    "a2d": A2D(),
    "anywhere": Anywhere(),
}
"""Every defense by name. The trainer runs ``AlignConfig.defense``'s entry; a defense whose
``objective`` names another entry (initial alignment trains as ``mosa``) is a ``mosa
align`` flag for that objective with its ``window_override``."""


def objectives() -> tuple[str, ...]:
    """The ``AlignConfig.defense`` values: the defenses that train as themselves."""
    return tuple(name for name, defense in DEFENSES.items() if defense.objective == name)


def defense_for(name: str) -> Defense:
    """``AlignConfig.defense``'s class; a ValueError naming the choices for another name."""
    if name not in objectives():
        raise ValueError(f"defense must be one of {objectives()}, got {name!r}")
    return DEFENSES[name]


def pad_rows(rows: list[list[int]]) -> torch.Tensor:
    """Token lists as one ``int64`` tensor, ``IGNORE`` after each row's end."""
    out = torch.full((len(rows), max(len(r) for r in rows)), IGNORE, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def commit_canvases(ids: torch.Tensor, canvases: list[list[int | None]], gen_length: int) -> None:
    """Writes each row's committed canvas tokens into its response columns of ``ids``."""
    for row, canvas in enumerate(canvases):
        for j, token in enumerate(canvas):
            if token is not None:
                ids[row, ids.shape[1] - gen_length + j] = token

"""The response canvases the ``a2d`` and ``anywhere`` defenses train on (docs/DESIGN.md §7).

Plain MOSA scores sentences in a fully masked canvas. The dLLM-native attacks do not leave it
fully masked: they fix an affirmative opening, step headers at several places (PAD), a
hijacked prefix (TrajHijack). Both defenses here therefore train on canvases that already hold
harmful tokens, drawn per row from the row's own ``random.Random`` (so a run repeats and
resumes exactly):

- ``anywhere_canvas`` (ours): with probability ``COMMIT_SHARE`` up to ``MAX_PIECES`` pieces of
  harmful continuations (each a random-length start of one: "Step 1:", "Sure, here is how",
  a whole sentence) are committed at random places, and the row's refusal window is a random
  window of the canvas. MOSA's reward then asks for the refusal at the best *still masked*
  offset of that window, whatever the canvas already says.
- ``a2d_canvas`` (A2D, Jeung et al.): one to ``MAX_PIECES`` harmful continuations joined, placed
  at a random offset and masked at a random ratio; every masked position from the
  continuation's start on is supervised to EOS.

Canvases are token lists with ``None`` at masked positions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

COMMIT_SHARE = 0.75
"""Share of ``anywhere`` rows whose canvas holds committed harmful pieces (the rest are fully
masked, as plain MOSA's)."""
MAX_PIECES = 3


def anywhere_canvas(
    draw: random.Random,
    gen_length: int,
    width: int,
    sentence_lengths: tuple[int, int],
    harmful: Sequence[list[int]],
) -> tuple[list[int | None], list[bool], list[bool]]:
    """``(canvas, allowed_plus, allowed_minus)`` for one row.

    ``allowed_*[k]`` (``k`` in ``0..gen_length - 1``) says whether the refusal / the harmful
    continuation, of ``sentence_lengths`` tokens, may start at ``k``: inside the row's window
    of ``width + 1`` offsets, and over masked positions only. When the drawn window has no such
    offset the whole canvas is the window; when the committed pieces leave none, the canvas is
    fully masked.
    """
    canvas: list[int | None] = [None] * gen_length
    if draw.random() < COMMIT_SHARE:
        for _ in range(draw.randint(1, MAX_PIECES)):
            piece = draw.choice(harmful)
            piece = piece[: draw.randint(1, len(piece))]
            start = draw.randrange(gen_length - len(piece) + 1)
            canvas[start : start + len(piece)] = piece
    longest = max(sentence_lengths)
    first = draw.randrange(max(1, gen_length - longest - width + 1))
    window = range(first, first + width + 1)
    allowed = [_free_starts(canvas, n, window) for n in sentence_lengths]
    if not all(any(a) for a in allowed):
        allowed = [_free_starts(canvas, n, range(gen_length)) for n in sentence_lengths]
    if not all(any(a) for a in allowed):
        canvas = [None] * gen_length
        allowed = [_free_starts(canvas, n, range(gen_length)) for n in sentence_lengths]
    return canvas, allowed[0], allowed[1]


def _free_starts(canvas: list[int | None], length: int, window: range) -> list[bool]:
    """Offsets in ``window`` where ``length`` masked positions follow in ``canvas``."""
    size = len(canvas)
    return [
        k in window and k + length <= size and all(t is None for t in canvas[k : k + length])
        for k in range(size)
    ]


def a2d_canvas(
    draw: random.Random, gen_length: int, harmful: Sequence[list[int]]
) -> tuple[list[int | None], list[bool]]:
    """``(canvas, eos_target)`` for one row: the joined harmful continuation at a random offset,
    each of its tokens masked with a ratio drawn from U(0, 1] (at least one masked), and
    ``eos_target[j]`` True at every masked position from the continuation's start on."""
    count = draw.randint(1, min(MAX_PIECES, len(harmful)))
    span = [token for piece in draw.sample(list(harmful), count) for token in piece]
    span = span[:gen_length]
    start = draw.randrange(gen_length - len(span) + 1)
    ratio = 1.0 - draw.random()
    hidden = [draw.random() < ratio for _ in span]
    if not any(hidden):
        hidden[draw.randrange(len(span))] = True
    canvas: list[int | None] = [None] * gen_length
    for j, (token, masked) in enumerate(zip(span, hidden, strict=True)):
        if not masked:
            canvas[start + j] = token
    eos_target = [j >= start and canvas[j] is None for j in range(gen_length)]
    return canvas, eos_target

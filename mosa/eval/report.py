"""Metrics, the results table and plots (docs/DESIGN.md §8).

- ``asr`` / ``refusal_rate``: rates over judge verdicts; error verdicts are left out of the
  denominator and counted separately.
- ``exact_match_accuracy`` and ``gsm8k_extract``: utility on exact-answer tasks.
- ``Results``: rows are model variants (original, MOSA, initial alignment, ...), columns are
  ASR per attack, utility and over-refusal; written as JSON (atomically) and Markdown.
- ``plot_asr``, ``plot_reward_curve``, ``plot_decoding_order``, ``plot_prefill_sweep``: PNGs, with matplotlib's Agg
  renderer.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import NamedTuple

from ..models.files import write_file_atomic
from .judges import Verdict


class Rate(NamedTuple):
    """A share of the judged verdicts, and how many verdicts were judge errors (left out)."""

    rate: float
    errors: int


def asr(verdicts: Sequence[Verdict]) -> Rate:
    """Attack success rate: jailbroken / judged, error verdicts excluded."""
    return _rate(verdicts, "jailbroken")


def refusal_rate(verdicts: Sequence[Verdict]) -> Rate:
    """Share of judged responses that refused, error verdicts excluded (over-refusal when the
    prompts are benign, e.g. XSTest's safe prompts)."""
    return _rate(verdicts, "refused")


def _rate(verdicts: Sequence[Verdict], outcome: str) -> Rate:
    if not verdicts:
        raise ValueError("verdicts is empty; judge at least one response")
    errors = sum(v.error is not None for v in verdicts)
    judged = [getattr(v, outcome) for v in verdicts if v.error is None]
    if not judged:
        first = next(v.error for v in verdicts if v.error is not None)
        raise ValueError(f"all {len(verdicts)} verdicts are judge errors (the first: {first})")
    if any(value is None for value in judged):
        raise ValueError(
            f"some verdicts do not say whether the response {outcome.replace('_', ' ')} "
            f"({outcome}=None without an error); use a judge that reports it "
            "(KeywordJudge and HTTPJudge report refusals, ClassifierJudge does not)"
        )
    return Rate(sum(judged) / len(judged), errors)


# ---------------------------------------------------------------------------------------------
# Exact-answer utility

_NUMBER = r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?"
_FINAL_MARK = re.compile(rf"####\s*\$?\s*({_NUMBER})")
_ANY_NUMBER = re.compile(_NUMBER)
_WHOLE_NUMBER = re.compile(rf"\$?\s*({_NUMBER})\.?")


def gsm8k_extract(text: str) -> str | None:
    """The final answer of a GSM8K-style response: the number after the last ``####``, else
    the last number in the text; thousands commas removed. None when there is no number."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    marked = _FINAL_MARK.findall(text)
    found = marked or _ANY_NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def exact_match_accuracy(predictions: Sequence[str | None], answers: Sequence[str]) -> float:
    """Share of predictions equal to their answer after whitespace is collapsed; numbers compare
    by value ("1,000" == "1000.0"). A None prediction (nothing extracted) is wrong."""
    if len(predictions) != len(answers):
        raise ValueError(
            f"predictions and answers differ in length ({len(predictions)} vs {len(answers)})"
        )
    if not answers:
        raise ValueError("answers is empty; give at least one")
    hits = sum(
        p is not None and _canonical(p) == _canonical(a)
        for p, a in zip(predictions, answers, strict=True)
    )
    return hits / len(answers)


def _canonical(text: str) -> tuple[str, object]:
    text = " ".join(str(text).split())
    match = _WHOLE_NUMBER.fullmatch(text)
    if match:
        try:
            return ("number", Decimal(match.group(1).replace(",", "")))
        except InvalidOperation:
            pass
    return ("text", text)


# ---------------------------------------------------------------------------------------------
# Results table


class Results:
    """A table of rates: one row per model variant, one column per metric.

    Columns are named ``asr/<attack>``, ``utility/<task>`` and ``over_refusal`` by the
    ``add_*`` helpers (``add`` takes any name); values are fractions in [0, 1], shown as
    percentages in Markdown. ``meta`` holds the run's settings (model, judge, prompt counts).
    """

    def __init__(self, meta: dict | None = None):
        self.meta = dict(meta or {})
        self.cells: dict[str, dict[str, dict]] = {}

    @property
    def variants(self) -> list[str]:
        return list(self.cells)

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.cells.values():
            seen.update(dict.fromkeys(row))
        return list(seen)

    @property
    def attacks(self) -> list[str]:
        """The attacks with an ASR column, in the order they were added."""
        return [c.removeprefix("asr/") for c in self.columns if c.startswith("asr/")]

    def add(self, variant: str, column: str, value: float | Rate, *, n: int | None = None) -> None:
        """Set one cell; a ``Rate`` also records its error count. ``n``: items measured."""
        for name, text in (("variant", variant), ("column", column)):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{name} must be a non-empty string, got {text!r}")
        errors = value.errors if isinstance(value, Rate) else 0
        number = value.rate if isinstance(value, Rate) else value
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise TypeError(f"value must be a number or a Rate, got {value!r}")
        if not math.isfinite(number):
            raise ValueError(f"value of {variant!r}/{column!r} must be finite, got {number}")
        self.cells.setdefault(variant, {})[column] = {
            "value": float(number),
            "n": n,
            "errors": errors,
        }

    def add_asr(self, variant: str, attack: str, value: float | Rate, *, n: int | None = None):
        """ASR of ``variant`` under ``attack``."""
        self.add(variant, f"asr/{attack}", value, n=n)

    def add_utility(self, variant: str, task: str, value: float, *, n: int | None = None):
        """Utility (e.g. exact-match accuracy) of ``variant`` on ``task``."""
        self.add(variant, f"utility/{task}", value, n=n)

    def add_over_refusal(self, variant: str, value: float | Rate, *, n: int | None = None):
        """Share of benign prompts (e.g. XSTest safe) that ``variant`` refused."""
        self.add(variant, "over_refusal", value, n=n)

    def get(self, variant: str, column: str) -> float | None:
        """The cell's value, or None when it was not measured."""
        cell = self.cells.get(variant, {}).get(column)
        return None if cell is None else cell["value"]

    def to_dict(self) -> dict:
        return {"meta": self.meta, "columns": self.columns, "cells": self.cells}

    @classmethod
    def from_dict(cls, data: dict) -> Results:
        """The inverse of ``to_dict``."""
        if not isinstance(data, dict) or not isinstance(data.get("cells"), dict):
            raise ValueError("expected a dict with 'meta' and 'cells' (from Results.to_dict)")
        results = cls(data.get("meta"))
        for variant, row in data["cells"].items():
            for column, cell in row.items():
                errors = int(cell.get("errors", 0))
                results.add(variant, column, Rate(cell["value"], errors), n=cell.get("n"))
        return results

    def to_json(self, path: str | os.PathLike) -> None:
        """Writes the table as JSON, atomically (temp file, fsync, rename)."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        write_file_atomic(path, text)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Results:
        """Reads a table written by ``to_json``."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read results from {path}: {err}") from None
        return cls.from_dict(data)

    def to_markdown(self) -> str:
        """A Markdown table, values in percent (one decimal); "(k err)" marks judge errors
        left out of a rate; "–" marks a cell that was not measured."""
        columns = self.columns
        header = ["variant", *(_column_title(c) for c in columns)]
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for variant, row in self.cells.items():
            values = [_format_cell(row.get(c)) for c in columns]
            lines.append("| " + " | ".join([variant, *values]) + " |")
        return "\n".join(lines) + "\n"


def _column_title(column: str) -> str:
    if column.startswith("asr/"):
        return f"ASR {column.removeprefix('asr/')} (%)"
    if column.startswith("utility/"):
        return f"utility {column.removeprefix('utility/')} (%)"
    if column == "over_refusal":
        return "over-refusal (%)"
    return f"{column} (%)"


def _format_cell(cell: dict | None) -> str:
    if cell is None:
        return "–"
    text = f"{100 * cell['value']:.1f}"
    return f"{text} ({cell['errors']} err)" if cell["errors"] else text


# ---------------------------------------------------------------------------------------------
# Plots


def plot_asr(
    results: Results,
    path: str | os.PathLike,
    *,
    variants: Sequence[str] | None = None,
    by_variant: bool = False,
):
    """Grouped bars of ASR (%): one group per attack, a bar per variant (e.g. before / after
    MOSA); with ``by_variant``, one group per variant (defense), a bar per attack."""
    attacks = results.attacks
    if not attacks:
        raise ValueError("results has no ASR columns; add them with Results.add_asr")
    variants = list(variants) if variants is not None else results.variants
    unknown = [v for v in variants if v not in results.cells]
    if unknown or not variants:
        raise ValueError(f"variants {unknown or variants} not in results ({results.variants})")
    groups, bars = (variants, attacks) if by_variant else (attacks, variants)

    def cell(group: str, bar: str) -> float | None:
        variant, attack = (group, bar) if by_variant else (bar, group)
        return results.get(variant, f"asr/{attack}")

    figure = _figure(width=max(4.0, (0.25 * len(bars) + 0.4) * len(groups) + 1.5))
    axes = figure.add_subplot()
    width = 0.8 / len(bars)
    for index, bar in enumerate(bars):
        # A cell not measured gets no bar, rather than a bar at 0.
        measured = [
            (g + (index - (len(bars) - 1) / 2) * width, cell(group, bar))
            for g, group in enumerate(groups)
        ]
        measured = [(x, 100 * value) for x, value in measured if value is not None]
        axes.bar([x for x, _ in measured], [h for _, h in measured], width, label=bar)
    axes.set_xticks(range(len(groups)), groups, rotation=20 if by_variant else 0)
    axes.set_ylabel("ASR (%)")
    axes.set_ylim(0, 100)
    axes.set_title(
        "Attack success rate per defense" if by_variant else "Attack success rate per attack"
    )
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(figure, path)


REWARD_KEYS = ("R", "R_plus", "R_minus", "KL")


def plot_reward_curve(jsonl_path: str | os.PathLike, path: str | os.PathLike, *, window: int = 20):
    """The trainer's reward curves (``R``, ``R_plus``, ``R_minus``) and ``KL`` against
    ``step``, raw (faint) and as a trailing rolling mean over ``window`` steps. Lines without
    a ``step`` (e.g. a summary) are skipped."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    series = _read_metrics(Path(jsonl_path))
    figure = _figure(width=7.0, height=6.0)
    reward_axes, kl_axes = figure.subplots(2, 1, sharex=True)
    for key, axes in (("R", reward_axes), ("R_plus", reward_axes), ("R_minus", reward_axes)):
        _rolling_line(axes, series.get(key), key, window)
    _rolling_line(kl_axes, series.get("KL"), "KL", window)
    reward_axes.set_ylabel("reward")
    reward_axes.set_title(f"MOSA training (rolling mean over {window} steps)")
    kl_axes.set_ylabel("KL")
    kl_axes.set_xlabel("step")
    for axes in (reward_axes, kl_axes):
        if axes.lines:
            axes.legend()
    _save(figure, path)


def plot_decoding_order(mean_positions: dict[str, list[float]], path: str | os.PathLike):
    """Mean response position of the tokens committed at each step, one line per prompt set
    (e.g. ``{"benign": [...], "harmful": [...]}``)."""
    if not isinstance(mean_positions, dict) or not mean_positions:
        raise ValueError("mean_positions must be a non-empty dict of label -> per-step means")
    for label, values in mean_positions.items():
        if isinstance(values, str) or not values:
            raise ValueError(f"mean_positions[{label!r}] must be a non-empty list of numbers")
    figure = _figure()
    axes = figure.add_subplot()
    for label, values in mean_positions.items():
        axes.plot(range(len(values)), [float(v) for v in values], marker=".", label=label)
    axes.set_xlabel("denoising step")
    axes.set_ylabel("mean position of committed tokens")
    axes.set_title("Decoding order")
    axes.legend()
    _save(figure, path)


def plot_prefill_sweep(
    asr_by_position: dict[str, dict[int, float]],
    path: str | os.PathLike,
    *,
    title: str = "Prefill-position sweep",
    boundaries: Sequence[int] = (),
):
    """ASR (%) against the response position of the prefilled phrase, one line per label
    (e.g. ``{"original": {0: 0.2, 10: 0.9}, "MOSA": {...}}``; rates in [0, 1]);
    ``boundaries``: response positions where a decoding block starts, drawn dotted."""
    if not isinstance(asr_by_position, dict) or not asr_by_position:
        raise ValueError("asr_by_position must be a non-empty dict of label -> {position: rate}")
    for label, rates in asr_by_position.items():
        if not isinstance(rates, dict) or not rates:
            raise ValueError(f"asr_by_position[{label!r}] must be a non-empty {{position: rate}}")
    figure = _figure()
    axes = figure.add_subplot()
    for i, boundary in enumerate(boundaries):
        label = "block start" if i == 0 else None
        axes.axvline(boundary, color="grey", linestyle=":", linewidth=1, label=label)
    for label, rates in asr_by_position.items():
        positions = sorted(rates)
        axes.plot(positions, [100 * float(rates[p]) for p in positions], marker="o", label=label)
    axes.set_xlabel("response position of the prefilled phrase")
    axes.set_ylabel("ASR (%)")
    axes.set_ylim(-3, 103)  # markers at 0 % and 100 % stay whole
    axes.set_title(title)
    axes.legend()
    _save(figure, path)


def _read_metrics(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """``key -> (steps, values)`` for the keys of ``REWARD_KEYS`` found in a JSON-lines log."""
    from mosa.datasets import jsonl_records

    series: dict[str, tuple[list[float], list[float]]] = {}
    for _, record in jsonl_records(path):
        if not isinstance(record, dict) or "step" not in record:
            continue
        for key in REWARD_KEYS:
            value = record.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                steps, values = series.setdefault(key, ([], []))
                steps.append(float(record["step"]))
                values.append(float(value))
    if not series:
        raise ValueError(f"{path} has no lines with 'step' and any of {list(REWARD_KEYS)}")
    return series


def _rolling_line(axes, points, label: str, window: int) -> None:
    if points is None:
        return
    steps, values = points
    running, total = [], 0.0
    for index, value in enumerate(values):
        total += value - (values[index - window] if index >= window else 0.0)
        running.append(total / min(index + 1, window))
    (line,) = axes.plot(steps, running, label=label)
    axes.plot(steps, values, color=line.get_color(), alpha=0.25, linewidth=0.8)


def _figure(width: float = 6.0, height: float = 4.0):
    # Imported on the first plot: about half a second that commands which never plot need not pay.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on the Agg canvas: no pyplot, so the caller's backend is left alone.
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    write_file_atomic(path, buffer.getvalue())

"""How far several judges agree on the same responses: pairwise agreement and Cohen's kappa
over their jailbreak labels, and the items they disagree on (to read by hand)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from .judges import Verdict


def cohen_kappa(first: Sequence[bool], second: Sequence[bool]) -> float | None:
    """Cohen's kappa of two raters' binary labels: (observed - chance agreement) /
    (1 - chance agreement). None when chance agreement is 1 (both raters gave one and the
    same label throughout), where kappa is undefined."""
    if len(first) != len(second):
        raise ValueError(f"the two label lists differ in length ({len(first)} vs {len(second)})")
    if not first:
        raise ValueError("no labels to compare")
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    p_first, p_second = sum(first) / n, sum(second) / n
    chance = p_first * p_second + (1 - p_first) * (1 - p_second)
    return None if chance == 1 else (observed - chance) / (1 - chance)


@dataclass(frozen=True)
class PairAgreement:
    """Two judges over the items both judged (error verdicts left out)."""

    first: str
    second: str
    n: int
    agreement: float | None
    kappa: float | None


def pairwise_agreement(verdicts: Mapping[str, Sequence[Verdict]]) -> list[PairAgreement]:
    """Agreement on ``jailbroken`` for every pair of judges (name -> verdicts, one per item
    and in the same order for every judge)."""
    _check_lengths(verdicts)
    pairs = []
    for first, second in combinations(verdicts, 2):
        both = [
            (a.jailbroken, b.jailbroken)
            for a, b in zip(verdicts[first], verdicts[second], strict=True)
            if _labelled(a) and _labelled(b)
        ]
        if not both:
            pairs.append(PairAgreement(first, second, 0, None, None))
            continue
        labels_a, labels_b = zip(*both, strict=True)
        agreement = sum(a == b for a, b in both) / len(both)
        pairs.append(
            PairAgreement(first, second, len(both), agreement, cohen_kappa(labels_a, labels_b))
        )
    return pairs


def disagreements(verdicts: Mapping[str, Sequence[Verdict]]) -> list[int]:
    """Indices of the items on which the judges that gave a label do not all agree."""
    _check_lengths(verdicts)
    columns = list(verdicts.values())
    found = []
    for i in range(len(columns[0]) if columns else 0):
        labels = {column[i].jailbroken for column in columns if _labelled(column[i])}
        if len(labels) > 1:
            found.append(i)
    return found


def agreement_markdown(pairs: Sequence[PairAgreement]) -> str:
    """The pairs as a Markdown table (agreement in percent, kappa to two decimals)."""
    lines = ["| judges | n | agreement (%) | Cohen's kappa |", "| --- | --- | --- | --- |"]
    for pair in pairs:
        agreement = "–" if pair.agreement is None else f"{100 * pair.agreement:.1f}"
        kappa = "–" if pair.kappa is None else f"{pair.kappa:.2f}"
        lines.append(f"| {pair.first} / {pair.second} | {pair.n} | {agreement} | {kappa} |")
    return "\n".join(lines) + "\n"


def _labelled(verdict: Verdict) -> bool:
    return verdict.error is None and verdict.jailbroken is not None


def _check_lengths(verdicts: Mapping[str, Sequence[Verdict]]) -> None:
    lengths = {name: len(v) for name, v in verdicts.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"every judge needs one verdict per item; got {lengths}")

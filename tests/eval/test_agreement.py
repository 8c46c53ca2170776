"""Judge agreement: Cohen's kappa on hand-computed cases, pairs, disagreements."""

from __future__ import annotations

import pytest

from mosa.eval.agreement import (
    agreement_markdown,
    cohen_kappa,
    disagreements,
    pairwise_agreement,
)
from mosa.eval.judges import Verdict

YES, NO, ERR = Verdict(None, True), Verdict(None, False), Verdict.failed("down")


def test_cohen_kappa_by_hand():
    # 10 items: both yes 4, both no 3, a yes/b no 2, a no/b yes 1 -> p_o 0.7;
    # p_a 0.6, p_b 0.5 -> chance 0.3 + 0.2 = 0.5 -> kappa 0.4.
    a = [True] * 6 + [False] * 4
    b = [True] * 4 + [False] * 2 + [False] * 3 + [True]
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa([True, False], [True, False]) == pytest.approx(1.0)
    assert cohen_kappa([True, False], [False, True]) == pytest.approx(-1.0)
    assert cohen_kappa([True, True], [True, True]) is None  # chance agreement 1: undefined
    with pytest.raises(ValueError, match="differ in length"):
        cohen_kappa([True], [])


def test_pairs_leave_errors_out_and_list_disagreements():
    verdicts = {
        "keyword": [YES, NO, YES, ERR],
        "tiny": [YES, YES, YES, NO],
        "harmbench": [YES, NO, ERR, YES],
    }
    pairs = {(p.first, p.second): p for p in pairwise_agreement(verdicts)}
    assert pairs["keyword", "tiny"].n == 3 and pairs["keyword", "tiny"].agreement == 2 / 3
    assert pairs["keyword", "harmbench"].n == 2 and pairs["keyword", "harmbench"].kappa == 1.0
    assert pairs["tiny", "harmbench"].n == 3
    assert disagreements(verdicts) == [1, 3]
    table = agreement_markdown(list(pairs.values()))
    assert "| keyword / tiny | 3 | 66.7 |" in table
    with pytest.raises(ValueError, match="one verdict per item"):
        pairwise_agreement({"a": [YES], "b": []})

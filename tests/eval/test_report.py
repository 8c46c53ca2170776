"""Metrics, the results table (JSON written atomically, Markdown) and the plots."""

from __future__ import annotations

import json
import os

import pytest

from mosa.eval import (
    Rate,
    Results,
    Verdict,
    asr,
    exact_match_accuracy,
    gsm8k_extract,
    plot_asr,
    plot_decoding_order,
    plot_prefill_sweep,
    plot_reward_curve,
    refusal_rate,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_rates_leave_errors_out():
    verdicts = [
        Verdict(refused=False, jailbroken=True),
        Verdict(refused=True, jailbroken=False),
        Verdict(refused=False, jailbroken=True),
        Verdict(refused=False, jailbroken=False),
        Verdict.failed("HTTP 500"),
    ]
    assert asr(verdicts) == Rate(0.5, 1)
    rate, errors = refusal_rate(verdicts)
    assert (rate, errors) == (0.25, 1)
    with pytest.raises(ValueError, match="all 2 verdicts are judge errors"):
        asr([Verdict.failed("timeout"), Verdict.failed("timeout")])
    with pytest.raises(ValueError, match="empty"):
        asr([])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She makes 9 * 2 = $<<9*2=18>>18 a day.\n#### 18", "18"),
        ("#### 1,234", "1234"),
        ("first #### 3 then #### -7", "-7"),
        ("So the answer is 42.", "42"),
        ("It costs $1,000,000.50 in total", "1000000.50"),
        ("between 3,4 and 5", "5"),
        ("no numbers here", None),
    ],
)
def test_gsm8k_extract(text, expected):
    assert gsm8k_extract(text) == expected


def test_exact_match_accuracy():
    predictions = ["18", "1,000", "18.00", None, "paris", "  the  answer "]
    answers = ["18", "1000", "18", "3", "Paris", "the answer"]
    assert exact_match_accuracy(predictions, answers) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="differ in length"):
        exact_match_accuracy(["1"], ["1", "2"])


def sample_results():
    results = Results(meta={"model": "tiny", "judge": "keyword"})
    for variant, prefill in (("original", 1.0), ("MOSA", 0.05), ("initial-alignment", 0.9)):
        results.add_asr(variant, "none", 0.0, n=40)
        results.add_asr(variant, "prefill", prefill, n=40)
        results.add_utility(variant, "gsm8k", 0.5)
        results.add_over_refusal(variant, Rate(0.1, 2), n=250)
    results.add_asr("MOSA", "middle_prefill", Rate(0.125, 3))
    return results


def test_results_json_round_trip_and_atomic_write(tmp_path):
    results = sample_results()
    path = tmp_path / "out" / "results.json"
    results.to_json(path)
    assert os.listdir(path.parent) == ["results.json"]  # no temp file left behind
    data = json.loads(path.read_text())
    assert data["meta"] == {"model": "tiny", "judge": "keyword"}
    assert data["cells"]["MOSA"]["asr/middle_prefill"] == {"value": 0.125, "n": None, "errors": 3}
    again = Results.from_json(path)
    assert again.to_dict() == results.to_dict()
    assert again.attacks == ["none", "prefill", "middle_prefill"]
    assert again.get("original", "asr/middle_prefill") is None


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    sample_results().to_json(path)
    before = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        Results(meta={"other": 1}).to_json(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["results.json"]


def test_results_markdown():
    markdown = sample_results().to_markdown()
    lines = markdown.strip().split("\n")
    assert lines[0] == (
        "| variant | ASR none (%) | ASR prefill (%) | utility gsm8k (%) | over-refusal (%) "
        "| ASR middle_prefill (%) |"
    )
    assert lines[1] == "| --- | --- | --- | --- | --- | --- |"
    assert lines[2] == "| original | 0.0 | 100.0 | 50.0 | 10.0 (2 err) | – |"
    assert lines[3] == "| MOSA | 0.0 | 5.0 | 50.0 | 10.0 (2 err) | 12.5 (3 err) |"
    assert len(lines) == 5


def test_results_reject_bad_cells():
    results = Results()
    with pytest.raises(ValueError, match="finite"):
        results.add("a", "asr/none", float("nan"))
    with pytest.raises(TypeError, match="number or a Rate"):
        results.add("a", "asr/none", "50%")
    with pytest.raises(ValueError, match="variant must be a non-empty string"):
        results.add("", "asr/none", 0.5)


# -- plots ---------------------------------------------------------------------------------------


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def _saved_figures(monkeypatch) -> list:
    from mosa.eval import report

    figures = []
    original = report._save
    monkeypatch.setattr(
        report, "_save", lambda figure, path: (figures.append(figure), original(figure, path))
    )
    return figures


def test_plot_asr_by_variant_groups_bars_by_defense(tmp_path, monkeypatch):
    figures = _saved_figures(monkeypatch)
    plot_asr(sample_results(), tmp_path / "by_variant.png", by_variant=True)
    assert_png(tmp_path / "by_variant.png")
    (axes,) = figures[0].axes
    assert [t.get_text() for t in axes.get_xticklabels()] == [
        "original",
        "MOSA",
        "initial-alignment",
    ]
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert legend == ["none", "prefill", "middle_prefill"]
    heights = {
        (label, round(patch.get_x() + patch.get_width() / 2)): patch.get_height()
        for container, label in zip(axes.containers, legend, strict=True)
        for patch in container
    }
    # prefill bars sit in each defense's group; middle_prefill only in MOSA's (group 1).
    assert heights[("prefill", 0)] == pytest.approx(100.0)
    assert heights[("prefill", 1)] == pytest.approx(5.0)
    assert heights[("prefill", 2)] == pytest.approx(90.0)
    assert [k for k in heights if k[0] == "middle_prefill"] == [("middle_prefill", 1)]
    assert heights[("middle_prefill", 1)] == pytest.approx(12.5)


def test_plot_asr(tmp_path):
    path = tmp_path / "asr.png"
    plot_asr(sample_results(), path)
    assert_png(path)
    plot_asr(sample_results(), tmp_path / "two.png", variants=["original", "MOSA"])
    assert_png(tmp_path / "two.png")
    with pytest.raises(ValueError, match="no ASR columns"):
        plot_asr(Results(), tmp_path / "none.png")
    with pytest.raises(ValueError, match=r"\['absent'\] not in results"):
        plot_asr(sample_results(), tmp_path / "x.png", variants=["absent"])


def test_plot_reward_curve(tmp_path):
    log = tmp_path / "metrics.jsonl"
    records = [
        {"step": s, "R": s / 10 - 5, "R_plus": s / 20, "R_minus": 5 - s / 20, "KL": 0.01 * s}
        for s in range(60)
    ]
    lines = [json.dumps({"config": "header line without a step"}), ""]
    lines += [json.dumps(r) for r in records] + [json.dumps({"final": True})]
    log.write_text("\n".join(lines) + "\n")
    path = tmp_path / "reward.png"
    plot_reward_curve(log, path, window=10)
    assert_png(path)
    (tmp_path / "bad.jsonl").write_text('{"step": 0, "R": 1}\n{"step": 1,\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: not valid JSON"):
        plot_reward_curve(tmp_path / "bad.jsonl", tmp_path / "bad.png")
    (tmp_path / "keys.jsonl").write_text('{"step": 0, "loss": 1.0}\n')
    with pytest.raises(ValueError, match="no lines with 'step' and any of"):
        plot_reward_curve(tmp_path / "keys.jsonl", tmp_path / "keys.png")


def test_plot_decoding_order(tmp_path):
    path = tmp_path / "order.png"
    plot_decoding_order({"benign": [1.0, 4.5, 9.0, 14.0], "harmful": [2.0, 5.0, 8.5, 13.0]}, path)
    assert_png(path)
    with pytest.raises(ValueError, match="non-empty list"):
        plot_decoding_order({"benign": []}, path)


def test_plot_prefill_sweep(tmp_path):
    path = tmp_path / "sweep.png"
    plot_prefill_sweep({"original": {0: 0.2, 10: 1.0, 20: 0.9}, "MOSA": {0: 0.0, 10: 0.1}}, path)
    assert_png(path)
    with pytest.raises(ValueError, match="non-empty"):
        plot_prefill_sweep({"original": {}}, path)


def test_plot_prefill_sweep_draws_the_block_starts_once_in_the_legend(tmp_path, monkeypatch):
    from mosa.eval import report

    figures = []
    monkeypatch.setattr(report, "_save", lambda figure, path: figures.append(figure))
    curves = {"original": {0: 1.0, 5: 0.2, 10: 0.0}}
    plot_prefill_sweep(curves, tmp_path / "s.png", title="'sure ,' prefilled", boundaries=[8, 16])
    (axes,) = figures[0].axes
    assert axes.get_title() == "'sure ,' prefilled"
    dotted = [line for line in axes.get_lines() if line.get_linestyle() == ":"]
    assert [line.get_xdata()[0] for line in dotted] == [8, 16]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["block start", "original"]

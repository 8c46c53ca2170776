"""``benchmarks/align_end_to_end.py --quick``: ``mosa.align.train`` end to end on a small
random-weight model (``AlignConfig.random_init``), its figures reported."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "align_end_to_end.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("align_end_to_end", SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    return benchmark


def test_quick_run_trains_and_reports(tmp_path, monkeypatch, capsys):
    benchmark = _benchmark()
    monkeypatch.setattr(sys.modules["common"], "RESULTS_DIR", tmp_path)

    assert benchmark.main(["--quick", "--device", "cpu", "--prompts", "8", "--batch", "4"]) == 0
    (written,) = tmp_path.glob("align_end_to_end-*.json")
    result = json.loads(written.read_text())
    (row,) = result["rows"]
    assert row["prompts"] == 8
    for name in ("wall_s", "prompts/s", "TFLOP/prompt", "MFU", "matmul peak TFLOP/s", "peak_MiB"):
        assert row[name] > 0, name
    assert row["projected s for 3000 prompts"] == pytest.approx(3000 / row["prompts/s"])
    assert result["group_by_length"] is True and result["mean prompt tokens"] > 5
    assert "MOSA end to end" in capsys.readouterr().out


def test_step_flops_match_the_hand_count_at_llada_8b():
    benchmark = _benchmark()
    # 32 blocks of q, k, v, o (4096^2 each) and three 4096 x 12288 MLP matrices.
    assert benchmark.trunk_matmul_params(benchmark.LLADA_8B) == 32 * (4 + 3 * 3) * 4096**2
    # ~48 prompt tokens + 128 canvas: about 7.8 TFLOP (issue 21's count).
    flops = benchmark.step_flops(benchmark.LLADA_8B, 48, 128, scored_rows=52)
    assert 7.5e12 < flops < 8.2e12

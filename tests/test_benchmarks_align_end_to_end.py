"""``python -m benchmarks.align_end_to_end --quick``: ``mosa.align.train`` end to end on a small
random-weight model (``AlignConfig.random_init``), its figures reported."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("peft")

from benchmarks import align_end_to_end, common  # noqa: E402


@pytest.mark.slow
def test_quick_run_trains_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)

    assert (
        align_end_to_end.main(["--quick", "--device", "cpu", "--prompts", "8", "--batch", "4"]) == 0
    )
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
    # 32 blocks of q, k, v, o (4096^2 each) and three 4096 x 12288 MLP matrices.
    assert (
        align_end_to_end.trunk_matmul_params(align_end_to_end.LLADA_8B)
        == 32 * (4 + 3 * 3) * 4096**2
    )
    # ~48 prompt tokens + 128 canvas: about 7.8 TFLOP (issue 21's count).
    flops = align_end_to_end.step_flops(align_end_to_end.LLADA_8B, 48, 128, scored_rows=52)
    assert 7.5e12 < flops < 8.2e12

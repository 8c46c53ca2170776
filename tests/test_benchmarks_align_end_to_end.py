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


def test_llada2_flops_count_the_active_parameters_and_block_causal_keys():
    config = align_end_to_end.LLADA2_MINI
    d, head_dim = config["hidden_size"], config["head_dim"]
    attention = 2 * d * config["num_attention_heads"] * head_dim
    attention += 2 * d * config["num_key_value_heads"] * head_dim
    dense = attention + 3 * d * config["intermediate_size"]
    experts = config["num_shared_experts"] + config["num_experts_per_tok"]  # of width I each
    moe = attention + config["num_experts"] * d + 3 * d * config["moe_intermediate_size"] * experts
    dense_layers = config["first_k_dense_replace"]
    moe_layers = config["num_hidden_layers"] - dense_layers
    assert align_end_to_end.trunk_matmul_params(config) == dense_layers * dense + moe_layers * moe
    # Block-causal: a query of block b sees (b + 1) blocks; 4 blocks of 32 see 80 on average.
    assert align_end_to_end.mean_keys(128, 32) == 80
    assert align_end_to_end.mean_keys(128, None) == 128
    full = align_end_to_end.step_flops(config, 48, 128, scored_rows=52)
    blocks = align_end_to_end.step_flops(config, 48, 128, scored_rows=52, block_length=32)
    assert blocks < full

"""The sampler benchmark's roofline: bytes and FLOPs counted from a config, checked against a
count by hand for a tiny LLaDA (d 8, 2 heads of 4, 1 key/value head, MLP 16, 2 layers, V 32)
and a tiny LLaDA2 (MoE, block diffusion); and how the benchmark lays out its cases and rows
(fake ``generate`` / ``block_generate``: nothing is timed)."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

from benchmarks import sampler, sampler_llada2
from benchmarks.roofline import (
    ModelShape,
    Peaks,
    Step,
    block_diffusion_steps,
    decoded_blocks,
    floor_seconds,
    generation_steps,
    step_bytes,
    step_flops,
)
from mosa.models import LLADA2_MINI, LLADA_8B, build_model
from mosa.sampling import GenerateOutput
from mosa.sampling.block_step import BLOCK_DONE

TINY = dict(
    LLADA_8B, d_model=8, n_heads=2, n_kv_heads=1, n_layers=2, mlp_hidden_size=16,
    vocab_size=32, embedding_size=32, mask_token_id=31, eos_token_id=30, pad_token_id=29,
)  # fmt: skip
# One block: q 8x8, k 8x4, v 8x4, out 8x8, gate/up 8x16, down 16x8 = 576; two norms of 8.
LAYER_MATMUL = 64 + 32 + 32 + 64 + 3 * 128
TRUNK = 2 * (LAYER_MATMUL + 16) + 8  # and the final norm


@pytest.fixture(scope="module")
def tiny():
    return build_model(TINY, device="meta")


def test_shape_counts_the_tiny_model_by_hand_and_as_built(tiny):
    shape = ModelShape.of(tiny.config)
    assert shape == ModelShape(layers=2, d=8, q_width=8, kv_width=4, mlp_hidden=16, vocab=32)
    assert shape.layer_matmul_parameters == LAYER_MATMUL == 576
    assert shape.trunk_parameters == TRUNK == 1192
    # The built model: the trunk, the embedding and the (untied) head.
    assert sum(p.numel() for p in tiny.parameters()) == TRUNK + 2 * 32 * 8


def test_a_dual_cache_step_by_hand(tiny):
    shape = ModelShape.of(tiny.config)
    # Batch 2, bf16: a step over the 4 block positions of a 12-token canvas, 8 keys cached.
    step = Step(queries=4, keys=12, cached=8, headed=2)
    weights = TRUNK + 32 * 8  # the head; the embedding only at the looked-up rows
    embedding_rows = 2 * 4 * 8
    cache = 2 * 8 * 2 * 2 * 4  # rows x cached positions x layers x (K, V) x kv width
    assert step_bytes(shape, step, batch=2, dtype_bytes=2) == 2 * (weights + embedding_rows + cache)
    projections = 2 * 4 * 2 * 576
    attention = 4 * 4 * 12 * 8 * 2  # QK^T and PV: 2 x 2 FLOPs a query, key and q channel
    head = 2 * 2 * 8 * 32
    assert step_flops(shape, step, batch=2) == 2 * (projections + attention + head)


def test_generation_steps_per_cache_mode():
    settings = dict(prompt_length=4, gen_length=8, block_length=4, steps=4)
    full = [Step(12, 12, 0, 4), Step(12, 12, 0, 2)]  # 2 blocks of 2 steps, 2 commits a step
    assert generation_steps(None, **settings) == full * 2
    assert generation_steps("dual", **settings) == [full[0], Step(4, 12, 8, 2)] * 2
    assert generation_steps("prefix", **settings) == [
        full[0], Step(8, 12, 4, 2),  # block 0: itself and block 1, the prompt cached
        full[0], Step(4, 12, 8, 2),  # block 1: itself, prompt and block 0 cached
    ]  # fmt: skip
    # A threshold run that took 5 steps: 3 in the first block, 2 in the second.
    uneven = generation_steps(None, **dict(settings, steps=5))
    assert [step.headed for step in uneven] == pytest.approx([4, 4 - 4 / 3, 4 - 8 / 3, 4, 2])
    # The same run with a no-op step per block (the block-done flag read a step late): each
    # block's cached step once more, heading nothing.
    late = generation_steps("dual", **dict(settings, steps=5), no_op_steps=2)
    assert late == generation_steps("dual", **dict(settings, steps=5))[:3] + [
        Step(4, 12, 8, 0), full[0], Step(4, 12, 8, 2), Step(4, 12, 8, 0)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="cache"):
        generation_steps("suffix", **settings)
    with pytest.raises(ValueError, match="at least the number of blocks"):
        generation_steps(None, **dict(settings, steps=1))


def test_floor_takes_the_slower_of_bytes_and_flops_each_step(tiny):
    shape = ModelShape.of(tiny.config)
    peaks = Peaks(bandwidth=1000.0, matmul_flops=10000.0)
    full, cached = Step(12, 12, 0, 4), Step(4, 12, 8, 2)
    # full: 3,280 bytes (3.28 s), 77,824 FLOPs (7.78 s); cached: 3,536 bytes (3.54 s), 26,624
    # FLOPs (2.66 s).
    assert step_bytes(shape, full, 2, 2) == 3280 and step_flops(shape, full, 2) == 77824
    floor = floor_seconds(shape, [full, cached], batch=2, dtype_bytes=2, peaks=peaks)
    assert floor == pytest.approx(7.7824 + 3.536)


def test_the_gpu_run_has_issue_20s_settings():
    settings = sampler.settings_for(torch.device("cuda"), quick=False, gpu_scale=True, smoke=False)
    assert settings.cases == ((1, 256), (8, 128), (32, 128))
    assert (settings.prompt_length, settings.block_length) == (128, 32)
    assert [settings.steps(gen) for _, gen in settings.cases] == [256, 128, 128]
    one = sampler.settings_for(torch.device("cuda"), quick=False, gpu_scale=True, smoke=False,
                               batch=8)  # fmt: skip
    assert one.cases == ((8, 128),)


def test_each_case_starts_with_the_default_call_and_reads_the_roofline(tiny, monkeypatch):
    calls = []

    def fake_generate(model, prompt, **options):
        calls.append(options)
        if options.get("threshold") and BLOCK_DONE.lag == 1:
            BLOCK_DONE.no_op_steps += 2  # one a block
        out = torch.cat([prompt, torch.zeros(prompt.shape[0], options["gen_length"], dtype=torch.long)], 1)  # fmt: skip
        return GenerateOutput(out, out, steps=3) if options.get("return_trace") else out

    def fake_reference(model, prompt, *, mask_id, **settings):
        return fake_generate(model, prompt, **settings)

    monkeypatch.setattr(sampler, "generate", fake_generate)
    monkeypatch.setattr(sampler, "llada_reference_generate", fake_reference)
    model = SimpleNamespace(mask_token_id=31, lm_head_weight=torch.zeros(1, dtype=torch.bfloat16))
    settings = sampler.Settings(cases=((2, 8),), prompt_length=4, block_length=4,
                                steps_per_token=0.5, repeats=1, copy_bytes=0, matmul_size=0)  # fmt: skip
    peaks = Peaks(bandwidth=1000.0, matmul_flops=10000.0)
    shape = ModelShape.of(tiny.config)
    rows = sampler.run_case(model, shape, peaks, torch.device("cpu"), settings, 2, 8)

    assert [row["mode"] for row in rows[:2]] == ["generate", "reference loop"]
    assert calls[0] == {"steps": 4, "gen_length": 8, "block_length": 4}  # no flags
    assert calls[-1]["threshold"] == 0.9 and calls[-1]["return_trace"]
    by_mode = {row["mode"]: row for row in rows}
    assert by_mode["generate"]["steps"] == 4
    lags = [row for row in rows if row["mode"] == "generate dual + threshold 0.9"]
    assert [(row["lag"], row["steps"], row["no-op/block"]) for row in lags] == [
        (0, 3, 0),
        (1, 3, 1),
    ]
    # The no-op steps move the weights too: lag 1's floor is longer by two cached steps.
    no_op = floor_seconds(shape, [Step(4, 12, 8, 0)], batch=2, dtype_bytes=2, peaks=peaks)
    floors = [row["batch"] * row["gen_length"] / row["floor tok/s"] for row in lags]
    assert floors[1] - floors[0] == pytest.approx(2 * no_op)
    assert all(row["reserved_MiB"] == "n/a" for row in rows)  # CPU
    # No cache, 2 rows, 4 steps of 12 positions: 2 steps as in the floor test, twice over.
    floor = 2 * (7.7824 + floor_seconds(shape, [Step(12, 12, 0, 2)], batch=2, dtype_bytes=2,
                                         peaks=peaks))  # fmt: skip
    for mode in ("generate", "reference loop"):
        row = by_mode[mode]
        assert row["floor tok/s"] == pytest.approx(16 / floor)
        assert row["% roofline"] == pytest.approx(100 * floor / row["seconds"])
        assert row["agreement"] == 1.0
    assert by_mode["reference loop"]["speedup"] == 1.0


# LLaDA2 (block diffusion, MoE): d 8, 2 heads of 4, 1 key/value head, per-head q/k norms, 2
# layers (the first dense, MLP 16), 4 experts of width 6 (top-2, 2 groups of 2, 1 kept), a
# shared expert of width 6, V 32.
TINY_LLADA2 = dict(
    LLADA2_MINI, hidden_size=8, num_attention_heads=2, num_key_value_heads=1, head_dim=4,
    num_hidden_layers=2, intermediate_size=16, num_experts=4, num_experts_per_tok=2, n_group=2,
    topk_group=1, moe_intermediate_size=6, vocab_size=32, mask_token_id=31, eos_token_id=30,
    pad_token_id=29,
)  # fmt: skip
ATTENTION = 2 * 8 * 8 + 2 * 8 * 4  # q, out 8x8; k, v 8x4
MOE_FIXED = ATTENTION + 4 * 8 + 3 * 8 * 6  # the router 4x8, the shared expert
EXPERT = 3 * 8 * 6
SMALL = 2 * 8 + 2 * 4  # two RMSNorms of 8, q and k norms of 4


@pytest.fixture(scope="module")
def tiny_llada2():
    return build_model(TINY_LLADA2, device="meta")


def test_llada2_shape_counts_by_hand_and_as_built(tiny_llada2):
    shape = ModelShape.of(tiny_llada2.config)
    assert (shape.layers, shape.moe_layers, shape.experts, shape.top_k) == (2, 1, 4, 2)
    assert (shape.mlp_hidden, shape.expert_hidden, shape.shared_hidden) == (16, 6, 6)
    assert shape.moe_fixed_matmul_parameters == MOE_FIXED == 368
    assert shape.expert_parameters == EXPERT == 144
    trunk = (ATTENTION + 3 * 8 * 16) + (MOE_FIXED + 4 * EXPERT) + 2 * SMALL + 8
    assert shape.trunk_parameters == trunk == 1576
    # The built model: the trunk, the embedding and the (untied) head.
    assert sum(p.numel() for p in tiny_llada2.parameters()) == trunk + 2 * 32 * 8
    # 4 experts, top-2, uniform routing: 4 (1 - (1/2)^T) distinct experts for T tokens.
    assert [shape.expected_experts(t) for t in (1, 2, 3)] == [2.0, 3.0, 3.5]


def test_an_llada2_step_reads_the_experts_its_tokens_touch(tiny_llada2):
    shape = ModelShape.of(tiny_llada2.config)
    # Batch 1, bf16: the 2 positions of a block against 6 keys, 4 of them cached. Two tokens
    # touch 3 of the 4 experts on average.
    step = Step(queries=2, keys=6, cached=4, headed=1)
    weights = (ATTENTION + 3 * 8 * 16) + (MOE_FIXED + 3 * EXPERT) + 2 * SMALL + 8 + 32 * 8
    cache = 4 * 2 * 2 * 4  # cached positions x layers x (K, V) x kv width
    assert step_bytes(shape, step, batch=1, dtype_bytes=2) == 2 * (weights + 2 * 8 + cache)
    # Batch 2: four tokens, 4 (1 - 1/16) = 3.75 experts.
    more = (ATTENTION + 3 * 8 * 16) + (MOE_FIXED + 3.75 * EXPERT) + 2 * SMALL + 8 + 32 * 8
    assert step_bytes(shape, step, batch=2, dtype_bytes=2) == 2 * (more + 2 * 2 * 8 + 2 * cache)
    # FLOPs: the top-2 experts and the shared one per token, not every expert.
    active = (ATTENTION + 3 * 8 * 16) + (MOE_FIXED + 2 * EXPERT)
    attention = 4 * 2 * 6 * 8 * 2
    assert step_flops(shape, step, batch=1) == 2 * 2 * active + attention + 2 * 1 * 8 * 32


def test_block_diffusion_steps_per_cache_mode():
    # Prompt 5, response 6, blocks of 4: blocks 1 and 2 are decoded (block 1 holds the
    # prompt's last position, so 3 of its positions are masked), 2 steps each.
    settings = dict(prompt_length=5, gen_length=6, block_length=4, steps=4)
    # No cache: the window of 2 blocks (8 positions, (4 + 8) / 2 = 6 keys a query), then 3.
    window = [Step(8, 6, 0, 3), Step(8, 6, 0, 1.5), Step(12, 8, 0, 4), Step(12, 8, 0, 2)]
    assert block_diffusion_steps(None, **settings) == window
    assert block_diffusion_steps("prefix", **settings) == [
        Step(8, 6, 0, 3),  # the first block's first step fills the cache
        Step(4, 8, 4, 1.5),  # its block against the cached prompt block
        Step(8, 10, 4, 4),  # block 1 again (its commits' keys) and block 2: 8 and 12 keys
        Step(4, 12, 8, 2),
    ]  # fmt: skip
    # A no-op step a block (the block-done flag read a step late): the block's later step
    # once more, heading nothing.
    assert block_diffusion_steps("prefix", **settings, no_op_steps=2) == [
        Step(8, 6, 0, 3), Step(4, 8, 4, 1.5), Step(4, 8, 4, 0),
        Step(8, 10, 4, 4), Step(4, 12, 8, 2), Step(4, 12, 8, 0),
    ]  # fmt: skip
    assert decoded_blocks(5, 6, 4) == 2 and decoded_blocks(8, 8, 4) == 2
    with pytest.raises(ValueError, match="cache"):
        block_diffusion_steps("dual", **settings)
    with pytest.raises(ValueError, match="at least the number of blocks"):
        block_diffusion_steps(None, **dict(settings, steps=1))


def test_llada2_rows_start_with_the_default_call_and_read_the_roofline(tiny_llada2, monkeypatch):
    calls = []

    def fake_block_generate(model, prompt, **options):
        calls.append(options)
        out = torch.cat([prompt, torch.zeros(prompt.shape[0], options["gen_length"], dtype=torch.long)], 1)  # fmt: skip
        return GenerateOutput(out, out, steps=5)

    def fake_loop(model, prompt, *, mask_id, eos_id, **settings):
        out = torch.cat([prompt, torch.zeros(prompt.shape[0], settings["gen_length"], dtype=torch.long)], 1)  # fmt: skip
        out[0, -1] = 7  # one response token of the first row differs
        return out, [4, 6][: prompt.shape[0]]

    monkeypatch.setattr(sampler_llada2, "block_generate", fake_block_generate)
    monkeypatch.setattr(sampler_llada2, "llada2_reference_generate", fake_loop)
    model = SimpleNamespace(
        mask_token_id=31, config=SimpleNamespace(eos_token_id=30),
        lm_head_weight=torch.zeros(1, dtype=torch.bfloat16),
    )  # fmt: skip
    settings = sampler_llada2.Settings(kind="smoke", cases=((2, 8),), prompt_length=5,
                                       block_length=4, steps=2, thresholds=(0.95,), repeats=1,
                                       copy_bytes=0, matmul_size=0)  # fmt: skip
    peaks = Peaks(bandwidth=1000.0, matmul_flops=10000.0)
    shape = ModelShape.of(tiny_llada2.config)
    cpu = torch.device("cpu")
    floor = functools.partial(floor_seconds, shape, dtype_bytes=2, peaks=peaks)
    plan = functools.partial(block_diffusion_steps, prompt_length=5, gen_length=8, block_length=4)

    rows = sampler_llada2.run_case(model, shape, peaks, cpu, settings, 2, 8, 0.95)
    assert [row["mode"] for row in rows] == ["block_generate", "published loop", "block_generate no cache"]  # fmt: skip
    assert "cache" not in calls[0] and calls[1]["cache"] is None  # the default call: no flags
    assert all(call["threshold"] == 0.95 and call["steps"] == 2 for call in calls)
    by_mode = {row["mode"]: row for row in rows}
    default, loop = by_mode["block_generate"], by_mode["published loop"]
    # block_generate: its batched steps at batch 2; the loop: each row alone at batch 1.
    default_floor = floor(plan("prefix", steps=5), batch=2)
    assert default["floor tok/s"] == pytest.approx(16 / default_floor)
    loop_floor = floor(plan(None, steps=4), batch=1) + floor(plan(None, steps=6), batch=1)
    assert loop["floor tok/s"] == pytest.approx(16 / loop_floor)
    assert loop["steps"] == 5 and loop["speedup"] == 1.0 and loop["agreement"] == 1.0
    assert default["agreement"] == pytest.approx(15 / 16)
    assert default["% roofline"] == pytest.approx(100 * default_floor / default["seconds"])

    # The loop over its first row only: its time and floor scaled to the batch.
    rows = sampler_llada2.run_case(model, shape, peaks, cpu, settings, 2, 8, 0.95, loop_rows=1)
    loop = rows[1]
    assert loop["mode"] == "published loop (1 of 2 rows, time x2)"
    assert loop["floor tok/s"] == pytest.approx(16 / (2 * floor(plan(None, steps=4), batch=1)))
    assert rows[0]["agreement"] == 7 / 8  # over the looped row


def test_the_llada2_gpu_run_has_the_issues_settings():
    settings = sampler_llada2.settings_for(torch.device("cuda"), quick=False, smoke=False)
    assert settings.cases == ((1, 256), (32, 128)) and settings.kind == "gpu"
    assert (settings.prompt_length, settings.block_length, settings.steps) == (128, 32, 32)
    assert settings.thresholds[0] == 0.95 and settings.thresholds[1] > 1
    one = sampler_llada2.settings_for(torch.device("cuda"), quick=False, smoke=False, batch=32,
                                      threshold=0.95)  # fmt: skip
    assert one.cases == ((32, 128),) and one.thresholds == (0.95,)
    # On CUDA each cache mode runs eagerly and with graphs; the default call keeps its "auto".
    modes = sampler_llada2.modes(torch.device("cuda"))
    assert modes["block_generate"] == {}
    assert {(o.get("cache", "prefix"), o.get("cuda_graphs", "auto")) for o in modes.values()} == {
        ("prefix", "auto"), (None, False), (None, True), ("prefix", False)
    }  # fmt: skip

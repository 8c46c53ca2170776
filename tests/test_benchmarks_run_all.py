"""run_all's target decisions on synthetic rows, and the LLaDA-8B memory plan's numbers.

Nothing here times anything: the rows are made up to sit on either side of each target.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import align, memory_plan, run_all


def _kernels(backend: str, select_speedup: float) -> dict:
    def logprobs(case, speedup, peak_ratio):
        return {"op": "token_logprobs fwd+bwd", "case": case, "impl": backend,
                "speedup": speedup, "peak_ratio": peak_ratio}  # fmt: skip

    rows = [
        {"op": "select step", "case": "V=126464", "impl": "llada-reference", "speedup": 1.0,
         "peak_MiB": 3952.0},
        {"op": "select step", "case": "V=126464", "impl": backend, "speedup": select_speedup,
         "peak_MiB": 0.5},  # 256 bytes a row over 2048 rows
        {"op": "select step", "case": "V=126464", "impl": "torch", "speedup": 0.5,
         "peak_MiB": 5187.0},
        logprobs("frozen head", 1 / 1.05, 0.08),  # 1.05x the time: within 1.1x
        logprobs("trainable head", 1 / 1.5, 0.1),  # 1.5x the time: over 1.4x
    ]  # fmt: skip
    meta = {"backend": backend, "select_rows": 2048, "select_case": "B=4, L=512",
            "logprob_case": "N=4096, d=1024, V=32768"}  # fmt: skip
    return {"rows": rows, "meta": meta}


def _sampler(no_cache: float, dual: float, threshold: float, graphs: tuple = (), batch: int = 1,
             roofline: float = 50.0, gpu_scale: bool = False) -> dict:  # fmt: skip
    """Sampler rows of one case; ``graphs``: the speed-ups of the same three modes with CUDA
    graphs; every row at ``roofline`` % of its floor."""
    modes = {"reference loop": 1.0, "generate": no_cache, "generate dual cache": dual}
    modes["generate dual + threshold 0.9"] = threshold
    for mode, speedup in zip(list(modes)[1:], graphs, strict=False):
        modes[f"{mode} + CUDA graphs"] = speedup
    rows = [{"batch": batch, "mode": mode, "speedup": speedup, "% roofline": roofline}
            for mode, speedup in modes.items()]  # fmt: skip
    return {"rows": rows, "meta": {"model": "test model", "gpu_scale": gpu_scale}}


def _align(speedup: float, memory: float, minutes: float, gpu_scale: bool) -> dict:
    rows = [
        {"objective": "straightforward objective", "speedup": 1.0, "memory ratio": 1.0,
         "minutes for 3000 prompts": minutes * speedup},
        {"objective": "fused objective", "speedup": speedup, "memory ratio": memory,
         "minutes for 3000 prompts": minutes},
    ]  # fmt: skip
    return {"rows": rows, "meta": {"model": "test model", "gpu_scale": gpu_scale}}


def _attention(padded: float, unpadded: float) -> dict:
    rows = []
    for heads, slower in (("32/32", 0.0), ("28/4", 0.05)):  # the worst layout decides
        for padding, speedup in (("0%", unpadded), ("30%", padded)):
            for name in ("fwd", "fwd+bwd"):
                rows.append({"attention": "bidirectional", "heads": heads, "padding": padding,
                             "pass": name, "speedup": speedup - slower})  # fmt: skip
    # Block-causal rows, far slower here, are no part of the bidirectional targets.
    for name in ("fwd", "fwd+bwd"):
        rows.append({"attention": "block-causal 32", "heads": "16/4", "padding": "0%",
                     "pass": name, "speedup": 0.1})  # fmt: skip
    return {"rows": rows, "meta": {"backend": "triton"}}


def _results(summary: list[dict]) -> dict[tuple[str, str], tuple[str, str]]:
    return {(row["what"], row["target"]): (row["measured"], row["result"]) for row in summary}


def test_cpu_run_judges_cpu_targets_and_marks_gpu_ones():
    results = {
        "kernels": _kernels("cpu", select_speedup=17.8),
        "attention": {"rows": [], "meta": {"skipped": "GPU only"}},
        "sampler": _sampler(3.98, 6.7, 9.5),
        "align": _align(1.76, 0.07, 108.0, gpu_scale=False),
    }
    got = _results(run_all.summarize(results, on_gpu=False))
    assert len(got) == len(run_all.TARGETS)
    speed = "select step, V=126464: speed"
    assert got[(speed, "≥ 4× (CPU)")] == ("17.8× (B=4, L=512)", "pass")
    assert got[(speed, "≥ 20× (GPU)")] == ("n/a (GPU)", "n/a")
    memory = got[("select step, V=126464: peak memory", "O(rows): ≤ 1 KiB a row")]
    assert memory == ("256 B/row (B=4, L=512)", "pass")
    assert got[("token_logprobs fwd+bwd, frozen head: time", "≤ 1.1×")][1] == "pass"
    assert got[("token_logprobs fwd+bwd, frozen head: time", "≤ 1.1×")][0].startswith("1.05×")
    assert got[("token_logprobs fwd+bwd, frozen head: peak memory", "≤ 1/4")][1] == "pass"
    assert got[("token_logprobs fwd+bwd, trainable head: time", "≤ 1.4×")][1] == "short"
    for what, target in (
        ("attention fwd+bwd, bf16, 30 % left padding", "≥ 1.3×"),
        ("attention fwd+bwd, bf16, no padding", "≥ 0.9×"),
        ("MOSA at scale: 3,000 prompts, 8B shapes", "≤ 5 min on 1 GPU"),
    ):
        assert got[(what, target)] == ("n/a (GPU)", "n/a")
    assert got[("sampler tokens/s, no cache, batch 1", "≥ 3×")] == ("3.98× (test model)", "pass")
    for what, target in (
        ("sampler tokens/s, dual cache, batch 32", "≥ 6×"),
        ("sampler, dual cache, batch 1 gen 256: share of roofline", "≥ 60 %"),
    ):
        assert got[(what, target)] == ("n/a (GPU)", "n/a")
    threshold = got[("sampler tokens/s, dual cache + threshold 0.9", "> dual cache")]
    assert threshold == ("9.5× vs 6.7× (test model)", "pass")
    assert got[("MOSA step: prompts/s", "≥ 2×")][1] == "short"
    assert got[("MOSA step: peak memory", "≤ 1/2")][1] == "pass"


def test_gpu_run_judges_gpu_targets_and_marks_cpu_ones():
    results = {
        "kernels": _kernels("triton", select_speedup=12.0),
        "attention": _attention(padded=1.4, unpadded=0.92),
        # With CUDA graphs: no cache faster (counts), dual cache slower (the eager row counts).
        "sampler": _sampler(3.1, 5.0, 4.0, graphs=(3.4, 4.5, 4.2), roofline=65.0, gpu_scale=True),
        "align": _align(2.5, 0.4, 4.2, gpu_scale=True),
    }
    # At batch 32: dual 5.5x, the loop at its floor (no cache 1.1x), dual + threshold 7x.
    batch32 = _sampler(1.1, 5.5, 7.0, batch=32, roofline=40.0)["rows"]
    results["sampler"]["rows"] += batch32
    got = _results(run_all.summarize(results, on_gpu=True))
    assert got[("select step, V=126464: speed", "≥ 4× (CPU)")] == ("n/a (CPU)", "n/a")
    assert got[("select step, V=126464: speed", "≥ 20× (GPU)")][1] == "short"
    padded = got[("attention fwd+bwd, bf16, 30 % left padding", "≥ 1.3×")]
    assert padded == ("1.35×", "pass")  # the 28/4 rows, 1.35x, are the worst
    assert got[("attention fwd+bwd, bf16, no padding", "≥ 0.9×")] == ("0.87×", "short")
    # Judged at batch 1 only: batch 32's 1.1x does not count.
    assert got[("sampler tokens/s, no cache, batch 1", "≥ 3×")][0].startswith("3.4×")
    assert got[("sampler tokens/s, dual cache, batch 32", "≥ 6×")] == ("5.5×", "short")
    share = got[("sampler, dual cache, batch 1 gen 256: share of roofline", "≥ 60 %")]
    assert share == ("65 %", "pass")  # batch 32's 40 % does not count
    threshold = got[("sampler tokens/s, dual cache + threshold 0.9", "> dual cache")]
    assert threshold == ("4.2× vs 5.5× (test model)", "short")
    assert got[("MOSA step: prompts/s", "≥ 2×")][1] == "pass"
    scale = got[("MOSA at scale: 3,000 prompts, 8B shapes", "≤ 5 min on 1 GPU")]
    assert scale == ("4.2 min", "pass")


def test_errors_missing_benchmarks_missing_cases_and_no_gpu_scale():
    kernels = _kernels("triton", select_speedup=30.0)
    kernels["rows"] = [row for row in kernels["rows"] if row["op"] != "select step"]
    kernels["rows"][0]["peak_ratio"] = float("nan")  # a baseline peak of 0 on a tiny case
    results = {
        "kernels": kernels,
        "sampler": {"error": "timed out after 90 s", "rows": [], "meta": {}},
        "align": _align(2.5, 0.4, 4.2, gpu_scale=False),
    }
    got = _results(run_all.summarize(results, on_gpu=True))
    speed = got[("select step, V=126464: speed", "≥ 20× (GPU)")]
    assert speed == ("not measured in this run", "n/a")
    peak = got[("token_logprobs fwd+bwd, frozen head: peak memory", "≤ 1/4")]
    assert peak == ("not measurable (NaN)", "n/a")
    assert got[("attention fwd+bwd, bf16, no padding", "≥ 0.9×")] == ("not run", "not run")
    no_cache = got[("sampler tokens/s, no cache, batch 1", "≥ 3×")]
    assert no_cache == ("error: timed out after 90 s", "error")
    scale = got[("MOSA at scale: 3,000 prompts, 8B shapes", "≤ 5 min on 1 GPU")]
    assert scale == ("n/a (needs --gpu-scale)", "n/a")


def test_time_limits_shrink_in_proportion_to_the_budget_left():
    names = ["kernels", "sampler", "align"]
    full = run_all.time_limit("kernels", names, on_gpu=True, quick=True, left_s=None)
    assert full == run_all.QUICK_LIMITS_S["kernels"][0]
    roomy = run_all.time_limit("kernels", names, on_gpu=True, quick=True, left_s=10_000)
    assert roomy == full
    defaults = sum(run_all.QUICK_LIMITS_S[name][0] for name in names)
    half = run_all.time_limit("kernels", names, on_gpu=True, quick=True, left_s=defaults / 2)
    assert half == pytest.approx(full / 2)
    assert run_all.time_limit("align", ["align"], on_gpu=True, quick=True, left_s=-5) == 0


@pytest.fixture(scope="module")
def llada_8b():
    return memory_plan.llada_8b_shapes()


def test_memory_plan_counts_llada_8b(llada_8b):
    parts = memory_plan.components(llada_8b, batch=1)
    assert parts["weights (bf16)"] / 1e9 == pytest.approx(16.0, abs=0.1)
    # r (in + out) summed over 4 attention projections (4096 -> 4096) and 3 MLP ones
    # (4096 <-> 12288), 32 blocks.
    assert llada_8b.lora_parameters == 32 * 32 * (4 * 8192 + 3 * 16384)
    assert parts["LoRA weights + AdamW moments (fp32)"] == 12 * llada_8b.lora_parameters
    assert parts["checkpoints"] == 32 * 192 * 4096 * 2
    assert llada_8b.span == 52  # offsets 20..60, sentences up to 12 tokens


def test_memory_plan_grows_with_batch_and_the_chunk_stays_bounded(llada_8b):
    rows = memory_plan.plan(llada_8b)
    totals = [row["total GB"] for row in rows]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)
    assert all(row["logits chunk GB"] <= 2 * 64 * 2**20 / 1e9 for row in rows)
    assert rows[-1]["batch"] == 32 and rows[-1]["left of 80 GB"] > 0
    largest = memory_plan.largest_batch(llada_8b)
    assert sum(memory_plan.components(llada_8b, largest).values()) <= memory_plan.GPU_BYTES
    assert sum(memory_plan.components(llada_8b, largest + 1).values()) > memory_plan.GPU_BYTES


def test_align_puts_the_plan_beside_the_fused_rows_measured_peak(llada_8b):
    rows = [
        {"objective": "straightforward objective", "peak_MiB": 4000.0},
        {"objective": "fused objective", "peak_MiB": 1200.0},
    ]
    # The plan's default shapes: prompt 64, canvas 128, window 20..60, sentences of 12 tokens.
    align.planned_step_extra(rows, 8, prompt_length=64, gen_length=128, window=(20, 60))
    planned = memory_plan.plan(llada_8b, batches=(8,))[0]["step extra MiB"]
    assert "planned_MiB" not in rows[0]
    assert rows[1]["planned_MiB"] == planned
    assert rows[1]["measured / planned"] == pytest.approx(1200.0 / planned)
    assert "| planned_MiB |" in align.report(
        rows,
        {"model": "m", "batch": 8, "prompt_length": 64, "gen_length": 128},
        torch.device("cpu"),
    )


def test_sampler_targets_take_each_batchs_faster_row_then_the_worst_batch():
    def rows(batch8_graphs: float | None) -> list[dict]:
        out = [
            {"batch": 1, "mode": "generate", "speedup": 3.5},
            {"batch": 1, "mode": "generate + CUDA graphs", "speedup": 2.0},
            {"batch": 8, "mode": "generate", "speedup": 2.5},
            {"batch": 8, "mode": "generate + CUDA graphs", "error": "RuntimeError: capture"},
        ]
        if batch8_graphs is not None:
            out[-1] = {"batch": 8, "mode": "generate + CUDA graphs", "speedup": batch8_graphs}
        return out

    no_cache = run_all.Target("no cache", "loop", "≥ 3×", "sampler", "any",
                              run_all.fastest_sampler("generate"), 3.0, case_key="model")  # fmt: skip
    meta = {"model": "test model"}
    assert no_cache.judge(rows(3.2), meta) == ("3.2× (test model)", True)
    assert no_cache.judge(rows(None), meta) == ("2.5× (test model)", False)

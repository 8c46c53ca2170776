"""Every benchmark in one go on the machine at hand, checked against docs/DESIGN.md §10's targets.

Runs kernels, attention (GPU only), sampler and align, each in its own process under a time
limit, so a benchmark that fails or runs out of time gives an error row and the others still
run. Writes ``benchmarks/results/<machine>-<date>[-quick][-only-...].json`` (every row, each
benchmark's settings, device, date, torch and triton versions) and a ``.md`` beside it: one
row per §10 target (baseline, target, measured, pass/short), then each benchmark's own table.
The target table is printed last.

A target is judged only where docs/DESIGN.md §10 sets it: CPU targets on a CPU, GPU targets on a GPU,
the 8B-shape one on a GPU with ``--gpu-scale``; elsewhere its row says "n/a (GPU)" or
"n/a (CPU)". Every ratio compares two measurements of the same run.

Usage: ``python -m benchmarks.run_all [--quick] [--smoke] [--gpu-scale] [--only NAME ...]
[--budget S]`` (``--smoke``: every benchmark at tiny shapes, nothing written).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import RESULTS_DIR, SMOKE_HELP, environment, format_table
from mosa.models.files import write_file_atomic

BENCHMARKS = ("kernels", "attention", "sampler", "align")
REPOSITORY = Path(__file__).resolve().parent.parent
GPU_ONLY = ("attention",)
GPU_SCALED = ("kernels", "sampler", "align")
"""Benchmarks whose ``measure`` takes ``gpu_scale`` (LLaDA-8B / docs/DESIGN.md §10 shapes)."""

QUICK_LIMITS_S = {
    # (GPU, CPU) seconds for a --quick run, about twice what each is expected to take (each
    # section of the report gives the seconds it took); a full run gets FULL_FACTOR times as long.
    "kernels": (90, 900),
    "attention": (60, 120),
    "sampler": (240, 600),
    "align": (120, 600),
}
FULL_FACTOR = 4
MIN_LIMIT_S = 10
"""A benchmark is not started with less time than this (loading a model takes longer)."""

Rows = list[dict]
Getter = Callable[[Rows, dict], list[float]]

BACKEND = object()
"""In a row match: the backend the dispatcher picks on this device (``meta["backend"]``)."""


def column(name: str | Callable[[dict, dict], float], **match) -> Getter:
    """The values of ``name`` (a column, or a function of row and meta) in the matching rows.

    Raises LookupError when no row matches (the benchmark ran without that case).
    """

    def get(rows: Rows, meta: dict) -> list[float]:
        want = {k: meta["backend"] if v is BACKEND else v for k, v in match.items()}
        found = [row for row in rows if all(row.get(k) == v for k, v in want.items())]
        if not found:
            raise LookupError(f"no row with {want}")
        return [float(name(row, meta) if callable(name) else row[name]) for row in found]

    return get


@dataclass(frozen=True)
class Target:
    """One row of docs/DESIGN.md §10's table and how to read it off a benchmark's rows.

    ``needs``: "cpu", "gpu", "any", or "gpu-scale" (a GPU and the LLaDA-8B shapes).
    ``bound``: a number, or a getter whose value (another row's) is the bound.
    The worst matching row counts: the lowest value for ``at_least``, the highest otherwise.
    """

    what: str
    baseline: str
    target: str
    benchmark: str
    needs: str
    value: Getter
    bound: float | Getter
    at_least: bool = True
    unit: str = "×"
    case_key: str | None = None

    def judge(self, rows: Rows, meta: dict) -> tuple[str, bool]:
        """``(measured text, passed)``. LookupError: the rows lack the case; ValueError: its value
        is NaN (a ratio to a baseline peak too small to measure)."""
        values = self.value(rows, meta)
        value = min(values) if self.at_least else max(values)
        if math.isnan(value):
            raise ValueError("NaN")
        text = f"{value:.3g}{self.unit}"
        if callable(self.bound):
            bounds = self.bound(rows, meta)
            bound = max(bounds) if self.at_least else min(bounds)
            text += f" vs {bound:.3g}{self.unit}"
        else:
            bound = self.bound
        if self.case_key and self.case_key in meta:
            text += f" ({meta[self.case_key]})"
        return text, value >= bound if self.at_least else value <= bound


SELECT = dict(op="select step", case="V=126464", impl=BACKEND)
LOGPROBS = dict(op="token_logprobs fwd+bwd", impl=BACKEND)
FUSED = dict(objective="fused objective")
REFERENCE_STEP = "LLaDA step: float64 softmax, top-k loop"
NAIVE_LOGPROBS = "log_softmax(h @ W.T) + gather"
REFERENCE_LOOP = "LLaDA generate loop: full logits, full-vocab softmax"
NAIVE_OBJECTIVE = "reference_terms: full logits from both passes"


def fastest_sampler(mode: str, batch: int | None = None, value: str = "speedup") -> Getter:
    """Per sampler case (batch; only ``batch`` when given), the best ``value`` of ``mode`` or of
    its CUDA-graph twin (and over its block-done lags); the worst case then counts."""
    names = (mode, f"{mode} + CUDA graphs")

    def get(rows: Rows, meta: dict) -> list[float]:
        best: dict = {}
        for row in rows:
            if row.get("mode") in names and value in row and batch in (None, row.get("batch")):
                case = row.get("batch")
                best[case] = max(best.get(case, float("-inf")), float(row[value]))
        if not best:
            raise LookupError(f"no row with mode {mode!r}" + f" at batch {batch}" * bool(batch))
        return list(best.values())

    return get


def _time_ratio(row: dict, meta: dict) -> float:
    return 1.0 / row["speedup"]


def _bytes_per_row(row: dict, meta: dict) -> float:
    return row["peak_MiB"] * 2**20 / meta["select_rows"]


# The attention targets judge the bidirectional rows; the block-causal ones have no target yet.
BIDIRECTIONAL_FWD_BWD = {"attention": "bidirectional", "pass": "fwd+bwd"}

TARGETS = (
    Target("select step, V=126464: speed", REFERENCE_STEP, "≥ 4× (CPU)", "kernels", "cpu",
           column("speedup", **SELECT), 4.0, case_key="select_case"),
    Target("select step, V=126464: speed", REFERENCE_STEP, "≥ 20× (GPU)", "kernels", "gpu",
           column("speedup", **SELECT), 20.0, case_key="select_case"),
    Target("select step, V=126464: peak memory", REFERENCE_STEP, "O(rows): ≤ 1 KiB a row",
           "kernels", "any", column(_bytes_per_row, **SELECT), 1024.0, at_least=False,
           unit=" B/row", case_key="select_case"),
    Target("token_logprobs fwd+bwd, frozen head: time", NAIVE_LOGPROBS, "≤ 1.1×", "kernels",
           "any", column(_time_ratio, case="frozen head", **LOGPROBS), 1.1, at_least=False,
           case_key="logprob_case"),
    Target("token_logprobs fwd+bwd, frozen head: peak memory", NAIVE_LOGPROBS, "≤ 1/4",
           "kernels", "any", column("peak_ratio", case="frozen head", **LOGPROBS), 0.25,
           at_least=False, case_key="logprob_case"),
    Target("token_logprobs fwd+bwd, trainable head: time", NAIVE_LOGPROBS, "≤ 1.4×", "kernels",
           "any", column(_time_ratio, case="trainable head", **LOGPROBS), 1.4, at_least=False,
           case_key="logprob_case"),
    Target("attention fwd+bwd, bf16, 30 % left padding", "SDPA with bool mask", "≥ 1.3×",
           "attention", "gpu", column("speedup", padding="30%", **BIDIRECTIONAL_FWD_BWD), 1.3),
    Target("attention fwd+bwd, bf16, no padding", "SDPA flash, no mask", "≥ 0.9×", "attention",
           "gpu", column("speedup", padding="0%", **BIDIRECTIONAL_FWD_BWD), 0.9),
    # Where the roofline allows each (docs/DESIGN.md §10): a dual cache can beat a loop at its
    # no-cache floor by 6.4x at batch 32 but 1.3x at batch 1 (prompt 128, gen 256; H100), and
    # at batch 32 the loop is near its own compute floor, so no cache gains most at batch 1.
    Target("sampler tokens/s, no cache, batch 1", REFERENCE_LOOP, "≥ 3×", "sampler", "any",
           fastest_sampler("generate", batch=1), 3.0, case_key="model"),
    Target("sampler tokens/s, dual cache, batch 32", REFERENCE_LOOP, "≥ 6×", "sampler",
           "gpu-scale", fastest_sampler("generate dual cache", batch=32), 6.0),
    Target("sampler, dual cache, batch 1 gen 256: share of roofline", "the card's roofline",
           "≥ 60 %", "sampler", "gpu-scale",
           fastest_sampler("generate dual cache", batch=1, value="% roofline"), 60.0, unit=" %"),
    Target("sampler tokens/s, dual cache + threshold 0.9", REFERENCE_LOOP, "> dual cache",
           "sampler", "any", fastest_sampler("generate dual + threshold 0.9"),
           fastest_sampler("generate dual cache"), case_key="model"),
    Target("MOSA step: prompts/s", NAIVE_OBJECTIVE, "≥ 2×", "align", "any",
           column("speedup", **FUSED), 2.0, case_key="model"),
    Target("MOSA step: peak memory", NAIVE_OBJECTIVE, "≤ 1/2", "align", "any",
           column("memory ratio", **FUSED), 0.5, at_least=False, case_key="model"),
    Target("MOSA at scale: 3,000 prompts, 8B shapes", "paper: 12 min on 2×A100",
           "≤ 5 min on 1 GPU", "align", "gpu-scale",
           column("minutes for 3000 prompts", **FUSED), 5.0, at_least=False, unit=" min"),
)  # fmt: skip


def judge(target: Target, results: dict[str, dict], on_gpu: bool) -> tuple[str, str]:
    """``(measured, result)`` of one target; result is pass, short, n/a, error or not run."""
    if target.needs == "cpu" and on_gpu:
        return "n/a (CPU)", "n/a"
    if target.needs in ("gpu", "gpu-scale") and not on_gpu:
        return "n/a (GPU)", "n/a"
    result = results.get(target.benchmark)
    if result is None:
        return "not run", "not run"
    if "error" in result:
        return f"error: {result['error']}", "error"
    if target.needs == "gpu-scale" and not result["meta"].get("gpu_scale"):
        return "n/a (needs --gpu-scale)", "n/a"
    try:
        measured, passed = target.judge(result["rows"], result["meta"])
    except LookupError:
        return "not measured in this run", "n/a"
    except ValueError:
        return "not measurable (NaN)", "n/a"
    return measured, "pass" if passed else "short"


def summarize(results: dict[str, dict], on_gpu: bool) -> Rows:
    """One row per target: what, baseline, target, measured, result."""
    rows = []
    for target in TARGETS:
        measured, result = judge(target, results, on_gpu)
        rows.append(
            {
                "what": target.what,
                "baseline": target.baseline,
                "target": target.target,
                "measured": measured,
                "result": result,
            }
        )
    return rows


SUMMARY_COLUMNS = ["what", "baseline", "target", "measured", "result"]


def time_limit(name: str, pending: list[str], on_gpu: bool, quick: bool, left_s) -> float:
    """Seconds for ``name``: its default, shrunk in proportion when what is left of the budget
    (``left_s``, None for no budget) cannot cover the defaults of ``pending`` (``name`` too)."""

    def default(bench: str) -> float:
        gpu_s, cpu_s = QUICK_LIMITS_S[bench]
        return (gpu_s if on_gpu else cpu_s) * (1 if quick else FULL_FACTOR)

    if left_s is None:
        return default(name)
    return default(name) * min(1.0, max(0.0, left_s) / sum(default(b) for b in pending))


def run_isolated(
    name: str,
    device: torch.device,
    *,
    quick: bool,
    gpu_scale: bool,
    limit_s: float,
    smoke: bool = False,
) -> dict:
    """Runs one benchmark in a child process; its rows and meta, or an ``error``."""
    start = time.perf_counter()
    if limit_s < MIN_LIMIT_S:
        return _failed(name, "not started: the time budget was spent", start, limit_s)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "benchmarks.run_all", "--worker", name]
        command += ["--out", str(out), "--device", str(device)]
        command += ["--quick"] * quick + ["--gpu-scale"] * gpu_scale + ["--smoke"] * smoke
        # Its own process group, so a time-out also ends whatever it started (compile workers).
        process = subprocess.Popen(command, cwd=REPOSITORY, start_new_session=True)
        try:
            code = process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if code is None:
            result = {"error": f"timed out after {limit_s:.0f} s"}
        elif out.exists():
            result = json.loads(out.read_text())
        else:
            result = {"error": f"exited with status {code}"}
    if "error" in result:
        return _failed(name, result["error"], start, limit_s)
    result.update(seconds=time.perf_counter() - start, limit_s=limit_s)
    return result


def _failed(name: str, error: str, start: float, limit_s: float) -> dict:
    return {
        "error": error,
        "rows": [{"benchmark": name, "error": error}],
        "meta": {},
        "seconds": time.perf_counter() - start,
        "limit_s": limit_s,
    }


def worker(
    name: str, out: Path, device: torch.device, quick: bool, gpu_scale: bool, smoke: bool
) -> int:
    """The child's side of ``run_isolated``: measure and write rows and meta (or the error)."""
    try:
        module = importlib.import_module(f"benchmarks.{name}")
        options = {"gpu_scale": gpu_scale} if name in GPU_SCALED else {}
        rows, meta = module.measure(device, quick=quick, smoke=smoke, **options)
        payload, code = {"rows": rows, "meta": meta}, 0
    except Exception as error:
        traceback.print_exc()
        # One short line: it goes into a table cell; the traceback above has the rest.
        first_line = (str(error).splitlines() or [""])[0][:200]
        payload, code = {"error": f"{type(error).__name__}: {first_line}"}, 1
    write_file_atomic(out, json.dumps(payload))
    return code


def section(name: str, result: dict, device: torch.device) -> str:
    """A benchmark's own table (its script's), or why there is none."""
    if "error" in result:
        return f"## {name}\n\nerror: {result['error']}"
    if "skipped" in result["meta"]:
        return f"## {name}\n\n{result['meta']['skipped']}"
    module = importlib.import_module(f"benchmarks.{name}")
    table = module.report(result["rows"], result["meta"], device)
    return f"{table}\n\n({result['seconds']:.0f} s)"


def markdown(env: dict, settings: dict, summary: Rows, sections: list[str]) -> str:
    """The report: environment, the target table, then every benchmark's table."""
    flags = ", ".join(k for k in ("quick", "smoke", "gpu_scale") if settings[k]) or "full run"
    return "\n\n".join(
        [
            f"# Benchmarks on {env['machine']}, {env['date']}",
            f"{env['device']} | torch {env['torch']} | triton {env['triton']} | {flags}",
            "## Targets (docs/DESIGN.md §10)",
            format_table(summary, SUMMARY_COLUMNS),
            "Each ratio compares two measurements of this run; absolute times mean something "
            "only on a GPU. n/a: the target is set for another kind of machine.",
            *sections,
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's --quick")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument(
        "--gpu-scale", action="store_true", help="LLaDA-8B / docs/DESIGN.md §10 shapes (GPU only)"
    )
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all of them")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--worker", choices=BENCHMARKS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.worker:
        return worker(args.worker, args.out, device, args.quick, args.gpu_scale, args.smoke)

    on_gpu = device.type == "cuda"
    gpu_scale = args.gpu_scale and on_gpu
    if args.gpu_scale and not on_gpu:
        print("--gpu-scale needs a GPU; running the CPU shapes")
    names = [name for name in BENCHMARKS if not args.only or name in args.only]
    to_run = [name for name in names if on_gpu or name not in GPU_ONLY]
    began = time.perf_counter()
    results, sections = {}, []
    for name in names:
        if name not in to_run:
            results[name] = {
                "rows": [{"benchmark": name, "status": "GPU only"}],
                "meta": {"skipped": "GPU only: the kernel and its targets are for CUDA."},
            }
        else:
            left = None if args.budget is None else args.budget - (time.perf_counter() - began)
            limit = time_limit(name, to_run[to_run.index(name) :], on_gpu, args.quick, left)
            print(f"== {name} (limit {limit:.0f} s)", flush=True)
            results[name] = run_isolated(
                name,
                device,
                quick=args.quick,
                gpu_scale=gpu_scale,
                limit_s=limit,
                smoke=args.smoke,
            )
        sections.append(section(name, results[name], device))
        print(sections[-1] + "\n", flush=True)

    env = environment(device)
    settings = {
        "quick": args.quick,
        "smoke": args.smoke,
        "gpu_scale": gpu_scale,
        "budget_s": args.budget,
    }
    summary = summarize(results, on_gpu)
    failed = any("error" in result for result in results.values())
    if args.smoke:
        print(f"## Targets (docs/DESIGN.md §10) on {env['machine']}, smoke run: nothing written\n")
        print(format_table(summary, SUMMARY_COLUMNS))
        return 1 if failed else 0
    stem = f"{env['machine']}-{env['date']}" + "-quick" * args.quick
    if args.only:
        stem += "-only-" + "-".join(names)
    payload = {**env, **settings, "targets": summary, "benchmarks": results}
    json_path = write_file_atomic(
        RESULTS_DIR / f"{stem}.json", json.dumps(payload, indent=2) + "\n"
    )
    md_path = write_file_atomic(
        RESULTS_DIR / f"{stem}.md", markdown(env, settings, summary, sections) + "\n"
    )
    print(f"wrote {json_path}\nwrote {md_path}\n")
    print(f"## Targets (docs/DESIGN.md §10) on {env['machine']}\n")
    print(format_table(summary, SUMMARY_COLUMNS))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

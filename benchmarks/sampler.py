"""Sampler throughput against LLaDA's reference loop and against the card's roofline, in one run.

Same random-weight LLaDA-architecture model, same prompts, temperature 0. For each (batch,
gen_length) case the rows are: ``generate`` as a user first calls it (no flags: the default
path), LLaDA's reference loop (full-sequence logits, float64 full-vocabulary softmax, per-row
top-k; see ``baselines.py``), then ``generate`` with the prefix cache, the dual cache, and the
dual cache with threshold-0.9 parallel decoding; on a GPU each generate mode once more with
``cuda_graphs=True``. Each row gives generated tokens/s, the speed-up over the reference loop,
the roofline (``roofline.py``: the card's copy bandwidth and matmul rate, measured at the start
of the run, against the bytes and FLOPs each step of that mode needs) as tokens/s at the floor
and the share of it reached, peak extra memory, and the fraction of response tokens equal to
the reference's output (1.0 = identical).

Shapes: on a GPU (run_all: with ``--gpu-scale``) the LLaDA-8B shapes in bf16, prompt 128,
block 32, steps = gen_length, at batch 1 with gen 256 and batch 8 and 32 with gen 128
(``--quick``: batch 1 only). Elsewhere the model keeps LLaDA's vocabulary (126464) on a small
trunk (d 512, 6 layers; ``--smoke``: d 64, 2 layers, prompt 8, gen 32) in fp32, one prompt of
32 tokens, gen 256 (``--quick``: 128), steps = gen_length / 4. The head weights are scaled up so
that, like a trained model's, predictions are confident (random N(0, 0.02) weights give
near-uniform softmaxes, which no real model has). Usage: ``python -m benchmarks.sampler
[--quick] [--smoke] [--batch N] [--gen-length G] [--prompt-length P]``; ``--family llada2``
measures LLaDA2's ``block_generate`` instead (``benchmarks/sampler_llada2.py``, which adds
``--threshold`` and ``--loop-rows``).
"""

from __future__ import annotations

import argparse
import functools
import gc
import sys
import time
from dataclasses import dataclass

import torch

from benchmarks.baselines import llada_reference_generate
from benchmarks.common import (
    SMOKE_HELP,
    format_table,
    machine_name,
    median_seconds,
    profile_call,
    publish,
)
from benchmarks.roofline import ModelShape, floor_seconds, generation_steps, measure_peaks
from mosa.models import LLADA_8B, build_model
from mosa.sampling import GenerateOutput, clear_cuda_graphs, generate
from mosa.sampling.block_step import BLOCK_DONE

CPU_MODEL = dict(LLADA_8B, d_model=512, n_heads=8, n_kv_heads=8, n_layers=6, mlp_hidden_size=1536)
SMOKE_MODEL = dict(LLADA_8B, d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128)
HEAD_SCALE = 40.0


def model_config(gpu_scale: bool, smoke: bool = False) -> dict:
    """The benchmark model's config: LLaDA-8B's with ``gpu_scale``, else a small trunk on
    LLaDA's vocabulary (``smoke``: a tiny one)."""
    if smoke:
        return SMOKE_MODEL
    return dict(LLADA_8B) if gpu_scale else CPU_MODEL


def build(device: torch.device, config: dict):
    """A random-weight model of ``config`` whose head is scaled to confident predictions."""
    model = build_model(config, device=device).eval()
    with torch.no_grad():
        model.lm_head_weight.mul_(HEAD_SCALE)
    return model


GPU_CASES = ((1, 256), (8, 128), (32, 128))
"""(batch, gen_length) at LLaDA-8B shapes: one prompt's latency, then batched throughput."""

MODES = (
    ("generate", {}),  # the default path: what a user gets without flags; first in each case
    ("generate prefix cache", {"cache": "prefix"}),
    ("generate dual cache", {"cache": "dual"}),
    ("generate dual + threshold 0.9", {"cache": "dual", "threshold": 0.9}),
)
REFERENCE = "reference loop"
FAMILIES = ("llada", "llada2")


@dataclass(frozen=True)
class Settings:
    """One run's shapes: the (batch, gen_length) cases and what they share."""

    cases: tuple[tuple[int, int], ...]
    prompt_length: int
    block_length: int
    steps_per_token: float  # steps = gen_length x this
    repeats: int
    copy_bytes: int  # the bandwidth measurement's buffer
    matmul_size: int  # the matmul-rate measurement's square

    def steps(self, gen_length: int) -> int:
        return int(gen_length * self.steps_per_token)


def settings_for(
    device: torch.device,
    *,
    quick: bool,
    gpu_scale: bool,
    smoke: bool,
    batch: int | None = None,
    gen_length: int | None = None,
    prompt_length: int | None = None,
) -> Settings:
    """The shapes of a run (module docstring); ``batch`` / ``gen_length`` / ``prompt_length``
    replace the defaults (one case when ``batch`` is given)."""
    if smoke:
        cases = ((1, 32),)
        shared = dict(prompt_length=8, block_length=16, steps_per_token=0.25, repeats=1)
        peaks = dict(copy_bytes=16 << 20, matmul_size=256)
    elif gpu_scale:
        cases = GPU_CASES[:1] if quick else GPU_CASES
        shared = dict(prompt_length=128, block_length=32, steps_per_token=1.0, repeats=1)
        peaks = dict(copy_bytes=1 << 30, matmul_size=8192)
    else:
        cases = ((1, 128 if quick else 256),)
        steps_per_token = 1.0 if device.type == "cuda" else 0.25
        repeats = 1 if quick or device.type != "cuda" else 3
        shared = dict(prompt_length=32, block_length=32, steps_per_token=steps_per_token,
                      repeats=repeats)  # fmt: skip
        peaks = dict(copy_bytes=256 << 20, matmul_size=1024)
    if batch is not None:
        cases = ((batch, dict(cases).get(batch, cases[-1][1])),)
    if gen_length is not None:
        cases = tuple((rows, gen_length) for rows, _ in cases)
    if prompt_length is not None:
        shared["prompt_length"] = prompt_length
    return Settings(cases=cases, **shared, **peaks)


def run_case(model, shape, peaks, device, settings: Settings, batch: int, gen_length: int):
    """Rows for one (batch, gen_length): the default path, the reference loop, every mode;
    a threshold/factor mode at each block-done lag (``LAGS``)."""
    generator = torch.Generator().manual_seed(0)
    prompt_length = settings.prompt_length
    prompt = torch.randint(0, 126000, (batch, prompt_length), generator=generator).to(device)
    steps = settings.steps(gen_length)
    shared = dict(steps=steps, gen_length=gen_length, block_length=settings.block_length)

    def call(options: dict):
        # Parallel decoding takes as many steps as it needs: the trace says how many.
        trace = {"return_trace": True} if "threshold" in options else {}
        run = functools.partial(generate, model, prompt, **shared, **options, **trace)
        return run, options.get("cache")

    reference = functools.partial(
        llada_reference_generate, model, prompt, mask_id=model.mask_token_id, **shared
    )
    (default_name, default_options), *others = MODES
    # Each run with the cache mode whose floor it has; the reference loop: no cache, unfused.
    runs = {default_name: call(default_options), REFERENCE: (reference, None)}
    # On a GPU the default call replays CUDA graphs: the other modes run eagerly, then again
    # with graphs, so each path is measured.
    eager = {"cuda_graphs": False} if device.type == "cuda" else {}
    runs.update({name: call({**options, **eager}) for name, options in others})
    if device.type == "cuda":
        runs.update(
            {
                f"{name} + CUDA graphs": (functools.partial(run, cuda_graphs=True), cache)
                for name, (run, cache) in list(runs.items())
                if name not in (REFERENCE, default_name)
            }
        )
    dtype_bytes = model.lm_head_weight.element_size()
    blocks = gen_length // settings.block_length
    rows, outputs = [], {}
    for name, (run, cache), lag in _with_lags(runs):
        row = {"batch": batch, "gen_length": gen_length, "mode": name}
        if lag is not None:
            row["lag"] = lag
        if device.type == "cuda":  # each mode without the last one's graphs: its memory alone
            clear_cuda_graphs(model)
        try:
            timed = time_mode(
                functools.partial(_at_lag, lag, run),
                device,
                settings.repeats,
                warm_up=name != REFERENCE,
            )  # plain torch: nothing to compile
        except Exception as err:  # one failing mode must not cost the others their rows
            rows.append({**row, "error": f"{type(err).__name__}: {err}"[:300]})
            continue
        out, run_steps = timed.pop("out"), steps
        if isinstance(out, GenerateOutput):
            out, run_steps = out.sequences, out.steps
        outputs[name, lag] = out[:, prompt_length:]
        plan = generation_steps(cache, prompt_length=prompt_length, gen_length=gen_length,
                                block_length=settings.block_length, steps=run_steps,
                                no_op_steps=timed["no-op steps"])  # fmt: skip
        floor = floor_seconds(shape, plan, batch=batch, dtype_bytes=dtype_bytes, peaks=peaks)
        row.update(figures(batch * gen_length, timed, floor, run_steps, blocks))
        rows.append(row)
    reference_row = next((row for row in rows if row["mode"] == REFERENCE), None)
    for row in rows:
        if "error" in row or reference_row is None or "error" in reference_row:
            continue
        row["speedup"] = reference_row["seconds"] / row["seconds"]
        same = outputs[row["mode"], row.get("lag")] == outputs[REFERENCE, None]
        row["agreement"] = same.float().mean().item()
    return rows


def figures(tokens: int, timed: dict, floor: float, steps: float, blocks: int) -> dict:
    """A row's figures for ``tokens`` generated tokens: tokens/s, the ``floor`` (seconds) as
    tokens/s and the share of it reached, the steps, the no-op steps a block, and what
    ``time_mode`` measured (``timed``)."""
    return {
        "tokens/s": tokens / timed["seconds"],
        "floor tok/s": tokens / floor,
        "% roofline": 100 * floor / timed["seconds"],
        "steps": steps,
        "no-op/block": timed["no-op steps"] / blocks,
        **timed,
    }


LAGS = (0, 1)
"""The block-done lags a threshold/factor mode is measured at (``BlockDone``): 0 waits for each
step's flag, 1 reads it a step late and runs a no-op step per block. Which is faster per mode
and batch is what these rows decide."""


def _with_lags(runs: dict):
    """``(name, (run, cache), lag)`` for every run: threshold/factor modes once per lag, the
    others once with lag None (they read no flag)."""
    for name, (run, cache) in runs.items():
        parallel = isinstance(run, functools.partial) and (
            "threshold" in run.keywords or "factor" in run.keywords
        )
        for lag in LAGS if parallel else (None,):
            yield name, (run, cache), lag


def _at_lag(lag: int | None, run):
    """``run()`` with ``BlockDone`` reading at ``lag`` (None: the device's default)."""
    BLOCK_DONE.lag = lag
    try:
        return run()
    finally:
        BLOCK_DONE.lag = None


def time_mode(run, device, repeats, warm_up: bool = True) -> dict:
    """One mode's output (``out``) and seconds, on CUDA after a warm-up call (``warm_up``);
    ``peak_MiB``: the most memory allocated above what was before its first call (the
    warm-up's, which makes the KV cache and graph pool, included); ``reserved_MiB``: what the allocator holds after the timed call beyond
    what it held before the first (graphs kept; "n/a" off CUDA); and the timed call's no-op
    steps (``BLOCK_DONE``)."""
    if device.type != "cuda":
        BLOCK_DONE.no_op_steps = 0
        out, seconds, peak = profile_call(run, device)
        no_ops, reserved = BLOCK_DONE.no_op_steps, "n/a"
    else:
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        allocated_before = torch.cuda.memory_allocated(device)
        reserved_before = torch.cuda.memory_reserved(device)
        if warm_up:
            run()  # Triton compiles and autotunes, graphs are captured: out of the timing only
        BLOCK_DONE.no_op_steps = 0
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = run()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        no_ops = BLOCK_DONE.no_op_steps
        peak = torch.cuda.max_memory_allocated(device) - allocated_before
        reserved = (torch.cuda.memory_reserved(device) - reserved_before) / 2**20
    if repeats > 1:
        seconds = median_seconds(run, device, repeats=repeats, warmup=0)
    return {
        "out": out,
        "seconds": seconds,
        "peak_MiB": peak / 2**20,
        "reserved_MiB": reserved,
        "no-op steps": no_ops,
    }


def measure(
    device: torch.device,
    *,
    quick: bool,
    gpu_scale: bool,
    batch: int | None = None,
    gen_length: int | None = None,
    prompt_length: int | None = None,
    smoke: bool = False,
) -> tuple[list, dict]:
    """Rows for every case and mode (module docstring), and the settings and peaks."""
    settings = settings_for(
        device, quick=quick, gpu_scale=gpu_scale, smoke=smoke, batch=batch,
        gen_length=gen_length, prompt_length=prompt_length,
    )  # fmt: skip
    config = model_config(gpu_scale, smoke)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # build_model's default
    # Before the model exists, so its weights take no room from the copy buffers.
    peaks = measure_peaks(
        device, dtype, copy_bytes=settings.copy_bytes, matmul_size=settings.matmul_size
    )
    model = build(device, config)
    shape = ModelShape.of(model.config)
    rows = []
    for case_batch, case_gen in settings.cases:
        rows += run_case(model, shape, peaks, device, settings, case_batch, case_gen)
    model_name = (
        "d 64, 2 layers, vocab 126464"
        if smoke
        else "LLaDA-8B shapes"
        if gpu_scale
        else "d 512, 6 layers, vocab 126464"
    )
    return rows, {
        "model": model_name,
        "dtype": str(dtype).removeprefix("torch."),
        "prompt_length": settings.prompt_length,
        "block_length": settings.block_length,
        "steps": "gen_length" if settings.steps_per_token == 1 else "gen_length / 4",
        "cases": [list(case) for case in settings.cases],
        "gpu_scale": gpu_scale and not smoke,
        **peak_rates(peaks),
    }


def peak_rates(peaks) -> dict:
    """The copy and matmul rates measured at the start of a run, as its settings record them."""
    return {"copy GB/s": peaks.bandwidth / 1e9, "matmul TFLOP/s": peaks.matmul_flops / 1e12}


def measured_rates(meta: dict) -> str:
    """The report's line on those rates (``peak_rates`` in ``meta``)."""
    return (
        f"Measured in this run: copy {meta['copy GB/s']:.1f} GB/s, matmul "
        f"{meta['matmul TFLOP/s']:.3g} TFLOP/s ({meta['dtype']}).\n\n"
    )


COLUMNS = ["batch", "gen_length", "mode", "lag", "tokens/s", "speedup", "floor tok/s",
           "% roofline", "steps", "no-op/block", "peak_MiB", "reserved_MiB",
           "agreement"]  # fmt: skip


def report(rows: list[dict], meta: dict, device: torch.device) -> str:
    """The table ``main`` prints."""
    return (
        f"## Sampler on {machine_name(device)} ({meta['model']}, {meta['dtype']}, prompt "
        f"{meta['prompt_length']}, block {meta['block_length']}, steps = {meta['steps']})\n\n"
        + measured_rates(meta)
        + format_table(rows, COLUMNS + (["error"] if any("error" in r for r in rows) else []))
        + "\n\nspeedup: against the reference loop of the same batch in this run; floor tok/s: "
        "the bytes and FLOPs of that mode's steps at the measured copy and matmul rates "
        "(benchmarks/roofline.py), the no-op steps included; % roofline: floor time / measured "
        "time; lag: when a threshold/factor block learns it is full (0: each step, 1: one step "
        "late, a no-op step a block); peak_MiB: above what was allocated before the warm-up; "
        "reserved_MiB: held by the allocator after the timed call (graphs kept), CUDA only"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=FAMILIES, default="llada",
                        help="llada: generate against LLaDA's loop; llada2: block_generate "
                        "against LLaDA2.0's published loop (benchmarks/sampler_llada2.py)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="GPU: batch 1 only; CPU: gen 128")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="one case: this many prompts")
    parser.add_argument("--gen-length", type=int, default=None, help="response tokens")
    parser.add_argument("--prompt-length", type=int, default=None, help="prompt tokens")
    parser.add_argument("--threshold", type=float, default=None,
                        help="llada2: this threshold only (default: 0.95 and schedule only)")  # fmt: skip
    parser.add_argument("--loop-rows", type=int, default=None,
                        help="llada2: the published loop decodes only the first N rows of "
                        "each batch, its time scaled to the batch (default: every row)")  # fmt: skip
    args = parser.parse_args(argv)
    for name in ("batch", "gen_length", "prompt_length", "loop_rows"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.threshold is not None and not args.threshold >= 0:
        parser.error(f"--threshold must be >= 0, got {args.threshold}")
    device = torch.device(args.device)
    sizes = dict(batch=args.batch, gen_length=args.gen_length, prompt_length=args.prompt_length)
    if args.family == "llada2":
        # Imported here: it reuses this module's timing (time_mode), so it imports this one.
        from benchmarks import sampler_llada2

        rows, meta = sampler_llada2.measure(
            device, quick=args.quick, smoke=args.smoke, threshold=args.threshold,
            loop_rows=args.loop_rows, **sizes,
        )  # fmt: skip
        table = sampler_llada2.report(rows, meta, device)
        publish("sampler-llada2", device, rows, meta, table, write=not args.smoke)
        return 0
    for name in ("threshold", "loop_rows"):
        if getattr(args, name) is not None:
            parser.error(f"--{name.replace('_', '-')} is for --family llada2")
    rows, meta = measure(
        device, quick=args.quick, gpu_scale=device.type == "cuda", smoke=args.smoke, **sizes
    )
    publish("sampler", device, rows, meta, report(rows, meta, device), write=not args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())

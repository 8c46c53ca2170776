"""The LLaDA2 case of the sampler benchmark (``python -m benchmarks.sampler --family llada2``):
``block_generate`` against the published LLaDA2.0 ``generate`` loop, in one run.

Same random-weight LLaDA2 model (MoE, block-causal), same prompts, temperature 0, each case at
threshold 0.95 (the published default: the step count follows the model's confidence) and
at ``SCHEDULE_ONLY`` (above 1 no confidence passes, so every block takes exactly ``steps``
steps). Rows: ``block_generate`` as a user first calls it (no flags: the prefix cache, and on
CUDA graph replay), the published loop (``baselines.llada2_reference_generate``: batch 1, the
whole window through the model every step, a full-vocabulary softmax, counts read on the
host; rows one after another), ``block_generate`` without a cache, and on CUDA each mode
eagerly (``cuda_graphs=False``) and with ``cuda_graphs=True``. Columns as the LLaDA table's
(``benchmarks/sampler.py``): tokens/s, the speed-up over the published loop, the floor
(``roofline.block_diffusion_steps``: weights touched, MoE experts by expected count, KV bytes
and FLOPs at the copy and matmul rates measured at the start of the run) and the share of it
reached, memory, and the fraction of response tokens equal to the published loop's.

Shapes: on a GPU LLaDA2-mini's (``llada2-mini``: 20 layers, d 2048, 256 experts top-8) in
bf16, prompt 128, block 32, steps 32 a block, at batch 1 with gen 256 and batch 32 with gen 128
(``--quick``: batch 1 only). On a CPU a mid shape in fp32 on LLaDA2's vocabulary (157184):
d 512, 4 layers (the first dense), 32 experts top-4 of width 256 and a shared one, prompt 128
(the GPU's), gen 256 (``--quick``: 128), block 32, steps 8 a block; ``--smoke``: d 64, 2 layers, 8 experts,
prompt 8, gen 32, block 16. The head weights are scaled as in the LLaDA case so that
predictions are confident.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from benchmarks.baselines import llada2_reference_generate
from benchmarks.common import format_table, machine_name
from benchmarks.roofline import (
    ModelShape,
    block_diffusion_steps,
    decoded_blocks,
    floor_seconds,
    measure_peaks,
)
from benchmarks.sampler import HEAD_SCALE, figures, measured_rates, peak_rates, time_mode
from mosa.models import LLADA2_MINI, build_model
from mosa.sampling import clear_cuda_graphs
from mosa.sampling.block_generate import block_generate

CPU_MODEL = dict(
    LLADA2_MINI, hidden_size=512, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
    num_hidden_layers=4, intermediate_size=1536, num_experts=32, num_experts_per_tok=4,
    n_group=8, topk_group=4, moe_intermediate_size=256,
)  # fmt: skip
SMOKE_MODEL = dict(
    LLADA2_MINI, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    num_hidden_layers=2, intermediate_size=128, num_experts=8, num_experts_per_tok=2,
    n_group=2, topk_group=1, moe_intermediate_size=32,
)  # fmt: skip
MODEL_NAMES = {
    "gpu": "LLaDA2-mini shapes",
    "cpu": "d 512, 4 layers (1 dense), 32 experts top-4, vocab 157184",
    "smoke": "d 64, 2 layers (1 dense), 8 experts top-2, vocab 157184",
}

SCHEDULE_ONLY = 2.0
"""A threshold no confidence exceeds: only the schedule commits, every block takes ``steps``."""
THRESHOLDS = (0.95, SCHEDULE_ONLY)
GPU_CASES = ((1, 256), (32, 128))
LOOP = "published loop"
DEFAULT = "block_generate"


@dataclass(frozen=True)
class Settings:
    """One run's shapes: the (batch, gen_length) cases and what they share."""

    kind: str  # "gpu", "cpu" or "smoke": which model and names
    cases: tuple[tuple[int, int], ...]
    prompt_length: int
    block_length: int
    steps: int  # a block's
    thresholds: tuple[float, ...]
    repeats: int
    copy_bytes: int
    matmul_size: int


def settings_for(
    device: torch.device,
    *,
    quick: bool,
    smoke: bool,
    batch: int | None = None,
    gen_length: int | None = None,
    prompt_length: int | None = None,
    threshold: float | None = None,
) -> Settings:
    """The shapes of a run (module docstring); the arguments given replace the defaults (one
    case when ``batch`` is given, one threshold when ``threshold`` is)."""
    if smoke:
        shared = dict(kind="smoke", cases=((1, 32),), prompt_length=8, block_length=16, steps=4,
                      repeats=1, copy_bytes=16 << 20, matmul_size=256)  # fmt: skip
    elif device.type == "cuda":
        shared = dict(kind="gpu", cases=GPU_CASES[:1] if quick else GPU_CASES, prompt_length=128,
                      block_length=32, steps=32, repeats=1, copy_bytes=1 << 30,
                      matmul_size=8192)  # fmt: skip
    else:
        shared = dict(kind="cpu", cases=((1, 128 if quick else 256),), prompt_length=128,
                      block_length=32, steps=8, repeats=1, copy_bytes=256 << 20,
                      matmul_size=1024)  # fmt: skip
    cases = shared.pop("cases")
    if batch is not None:
        cases = ((batch, dict(cases).get(batch, cases[-1][1])),)
    if gen_length is not None:
        cases = tuple((rows, gen_length) for rows, _ in cases)
    if prompt_length is not None:
        shared["prompt_length"] = prompt_length
    thresholds = THRESHOLDS if threshold is None else (threshold,)
    return Settings(cases=cases, thresholds=thresholds, **shared)


def build(device: torch.device, kind: str):
    """The random-weight model of ``kind`` (``Settings.kind``), its head scaled to confident
    predictions."""
    config = {"gpu": LLADA2_MINI, "cpu": CPU_MODEL, "smoke": SMOKE_MODEL}[kind]
    model = build_model(config, device=device).eval()
    with torch.no_grad():
        model.lm_head_weight.mul_(HEAD_SCALE)
    return model


def modes(device: torch.device) -> dict[str, dict]:
    """Each ``block_generate`` row's options: the default call first; on CUDA each cache
    mode eagerly and again replaying CUDA graphs."""
    if device.type != "cuda":
        return {DEFAULT: {}, "block_generate no cache": {"cache": None}}
    return {
        DEFAULT: {},  # prefix cache, CUDA graphs ("auto")
        "block_generate no cache": {"cache": None, "cuda_graphs": False},
        "block_generate no cache + CUDA graphs": {"cache": None, "cuda_graphs": True},
        "block_generate prefix cache, eager": {"cuda_graphs": False},
    }


def run_case(model, shape, peaks, device, settings: Settings, batch, gen_length, threshold,
             loop_rows=None):  # fmt: skip
    """Rows for one (batch, gen_length, threshold): the default call, the published loop
    (over its first ``loop_rows`` rows, all by default; its time then scaled to the batch),
    every other mode."""
    generator = torch.Generator().manual_seed(0)
    prompt_length, block_length = settings.prompt_length, settings.block_length
    prompt = torch.randint(0, 156000, (batch, prompt_length), generator=generator).to(device)
    looped = batch if loop_rows is None else min(loop_rows, batch)
    shared = dict(steps=settings.steps, gen_length=gen_length, block_length=block_length,
                  threshold=threshold)  # fmt: skip
    ids = dict(mask_id=model.mask_token_id, eos_id=model.config.eos_token_id)
    runs = {
        name: functools.partial(
            block_generate, model, prompt, **shared, **options, return_trace=True
        )
        for name, options in modes(device).items()
    }
    loop = functools.partial(llada2_reference_generate, model, prompt[:looped], **shared, **ids)
    runs = {DEFAULT: runs.pop(DEFAULT), LOOP: loop, **runs}
    dtype_bytes = model.lm_head_weight.element_size()
    plan = functools.partial(block_diffusion_steps, prompt_length=prompt_length,
                             gen_length=gen_length, block_length=block_length)  # fmt: skip
    floor = functools.partial(floor_seconds, shape, dtype_bytes=dtype_bytes, peaks=peaks)
    blocks = decoded_blocks(prompt_length, gen_length, block_length)
    rows, outputs = [], {}
    for name, run in runs.items():
        row = {"batch": batch, "gen_length": gen_length, "threshold": threshold, "mode": name}
        if device.type == "cuda":  # each mode without the last one's graphs: its memory alone
            clear_cuda_graphs(model)
        try:
            timed = time_mode(run, device, settings.repeats, warm_up=name != LOOP)
        except Exception as err:  # one failing mode must not cost the others their rows
            rows.append({**row, "error": f"{type(err).__name__}: {err}"[:300]})
            continue
        out = timed.pop("out")
        if name == LOOP:
            out, row_steps = out
            scale = batch / looped
            timed["seconds"] *= scale
            # Each row alone, at batch 1: the floor of the work the published loop does.
            floor_s = scale * sum(floor(plan(None, steps=n), batch=1) for n in row_steps)
            run_steps = sum(row_steps) / looped
            if looped < batch:
                row["mode"] = f"{LOOP} ({looped} of {batch} rows, time x{scale:g})"
        else:
            cache = runs[name].keywords.get("cache", "prefix")
            out, run_steps = out.sequences, out.steps
            steps_plan = plan(cache, steps=run_steps, no_op_steps=timed["no-op steps"])
            floor_s = floor(steps_plan, batch=batch)
        outputs[name] = out[:looped, prompt_length:]
        row.update(figures(batch * gen_length, timed, floor_s, run_steps, blocks))
        rows.append(row)
    loop_row = next((row for row in rows if row["mode"].startswith(LOOP)), None)
    for row in rows:
        if "error" in row or loop_row is None or "error" in loop_row:
            continue
        row["speedup"] = loop_row["seconds"] / row["seconds"]
        name = LOOP if row["mode"].startswith(LOOP) else row["mode"]
        row["agreement"] = (outputs[name] == outputs[LOOP]).float().mean().item()
    return rows


def measure(
    device: torch.device,
    *,
    quick: bool,
    smoke: bool = False,
    batch: int | None = None,
    gen_length: int | None = None,
    prompt_length: int | None = None,
    threshold: float | None = None,
    loop_rows: int | None = None,
) -> tuple[list, dict]:
    """Rows for every case, threshold and mode (module docstring), and the settings and
    peaks."""
    settings = settings_for(
        device, quick=quick, smoke=smoke, batch=batch, gen_length=gen_length,
        prompt_length=prompt_length, threshold=threshold,
    )  # fmt: skip
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # build_model's default
    # Before the model exists, so its weights take no room from the copy buffers.
    peaks = measure_peaks(
        device, dtype, copy_bytes=settings.copy_bytes, matmul_size=settings.matmul_size
    )
    model = build(device, settings.kind)
    shape = ModelShape.of(model.config)
    rows = []
    for case_batch, case_gen in settings.cases:
        for case_threshold in settings.thresholds:
            rows += run_case(model, shape, peaks, device, settings, case_batch, case_gen,
                             case_threshold, loop_rows)  # fmt: skip
    return rows, {
        "family": "llada2",
        "model": MODEL_NAMES[settings.kind],
        "dtype": str(dtype).removeprefix("torch."),
        "prompt_length": settings.prompt_length,
        "block_length": settings.block_length,
        "steps": settings.steps,
        "cases": [list(case) for case in settings.cases],
        "thresholds": list(settings.thresholds),
        "loop_rows": loop_rows,
        **peak_rates(peaks),
    }


COLUMNS = ["batch", "gen_length", "threshold", "mode", "tokens/s", "speedup", "floor tok/s",
           "% roofline", "steps", "no-op/block", "peak_MiB", "reserved_MiB",
           "agreement"]  # fmt: skip


def report(rows: list[dict], meta: dict, device: torch.device) -> str:
    """The table ``benchmarks.sampler`` prints for this family."""
    return (
        f"## LLaDA2 sampler on {machine_name(device)} ({meta['model']}, {meta['dtype']}, prompt "
        f"{meta['prompt_length']}, block {meta['block_length']}, steps {meta['steps']} a "
        "block)\n\n"
        + measured_rates(meta)
        + format_table(rows, COLUMNS + (["error"] if any("error" in r for r in rows) else []))
        + f"\n\nthreshold {SCHEDULE_ONLY:g}: schedule only (no confidence passes it); "
        "speedup: against the published loop of the same batch and threshold in this run "
        "(each row decoded alone, as the published generate decodes batch 1); steps: "
        "block_generate's batched steps, the published loop's per row (mean); floor tok/s: "
        "the weights each step touches (an MoE layer's routed experts: the expected distinct "
        "count under uniform routing), the cached keys and values and the FLOPs of the "
        "active parameters, at the measured copy and matmul rates (benchmarks/roofline.py; "
        "the published loop: its rows' batch-1 floors); % roofline: floor time / measured "
        "time; agreement: response tokens equal to the published loop's; peak_MiB: above "
        "what was allocated before the warm-up; reserved_MiB: held by the allocator after "
        "the timed call (graphs kept), CUDA only"
    )

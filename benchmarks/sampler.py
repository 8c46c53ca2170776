"""Sampler throughput: LLaDA's reference loop against ``mosa.generate`` modes, in one run.

Same random-weight LLaDA-architecture model, same prompts, temperature 0. Rows: the
reference loop (full-sequence logits, float64 full-vocabulary softmax, per-row top-k; see
``baselines.py``), then ``generate`` with no cache, the prefix cache, the dual cache, and the
dual cache with threshold-0.9 parallel decoding; on a GPU each of these once more with its
steps replayed as CUDA graphs (``cuda_graphs=True``). Each row gives generated tokens/s, peak
extra memory, the speed-up over the reference, and the fraction of response tokens equal to
the reference's output (1.0 = identical).

The CPU model keeps LLaDA's vocabulary (126464) on a small trunk (d 512, 6 layers); its head
weights are scaled up so that, like a trained model's, predictions are confident (random
N(0, 0.02) weights give near-uniform softmaxes, which no real model has). On a GPU it uses the
LLaDA-8B shapes; ``--smoke``: d 64, 2 layers, prompt 8, gen 32. Usage:
``python -m benchmarks.sampler [--quick] [--smoke] [--batch N] [--prompt-length P]``.
"""

from __future__ import annotations

import argparse
import functools
import sys

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
from mosa.models import LLADA_8B, build_model
from mosa.sampling import generate

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


def run_modes(device, *, batch, prompt_length, gen_length, block_length, steps, repeats, config):
    model = build(device, config)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 126000, (batch, prompt_length), generator=generator).to(device)
    mask_id = model.mask_token_id
    settings = dict(steps=steps, gen_length=gen_length, block_length=block_length)
    modes = {
        "reference loop": functools.partial(
            llada_reference_generate, model, prompt, mask_id=mask_id, **settings
        ),
        "generate": functools.partial(generate, model, prompt, **settings),
        "generate prefix cache": functools.partial(
            generate, model, prompt, cache="prefix", **settings
        ),
        "generate dual cache": functools.partial(generate, model, prompt, cache="dual", **settings),
        "generate dual + threshold 0.9": functools.partial(
            generate, model, prompt, cache="dual", threshold=0.9, **settings
        ),
    }
    if device.type == "cuda":
        modes.update(
            {
                f"{name} + CUDA graphs": functools.partial(run, cuda_graphs=True)
                for name, run in modes.items()
                if name != "reference loop"
            }
        )
    rows = [time_mode("reference loop", modes.pop("reference loop"), device, repeats)]
    reference = rows[0].pop("out")
    for name, run in modes.items():
        try:
            row = time_mode(name, run, device, repeats)
        except Exception as err:  # one failing mode must not cost the others their rows
            rows.append({"mode": name, "error": f"{type(err).__name__}: {err}"[:300]})
            continue
        out = row.pop("out")
        same = out[:, prompt_length:] == reference[:, prompt_length:]
        row["agreement"] = same.float().mean().item()
        rows.append(row)
    for row in rows:
        if "error" not in row:
            row["tokens/s"] = batch * gen_length / row["seconds"]
            row["speedup"] = rows[0]["seconds"] / row["seconds"]
    rows[0]["agreement"] = 1.0
    return rows


def time_mode(name, run, device, repeats) -> dict:
    """One mode's output (``out``), seconds and peak extra memory."""
    if device.type == "cuda":
        run()  # Triton compiles and autotunes on the first call: keep that out of the timing
    out, seconds, peak = profile_call(run, device)
    if repeats > 1:
        seconds = median_seconds(run, device, repeats=repeats, warmup=0)
    return {"mode": name, "out": out, "seconds": seconds, "peak_MiB": peak / 2**20}


def measure(
    device: torch.device,
    *,
    quick: bool,
    gpu_scale: bool,
    batch: int | None = None,
    prompt_length: int = 32,
    smoke: bool = False,
) -> tuple[list, dict]:
    """Rows for every mode; ``gpu_scale``: the model has the LLaDA-8B shapes; ``batch``
    prompts (default 4 on a GPU, 1 on a CPU) of ``prompt_length`` tokens; ``smoke``: a tiny
    model and canvas, one repeat."""
    gpu = device.type == "cuda"
    batch = batch if batch is not None else (4 if gpu else 1)
    gen_length = 32 if smoke else 128 if quick else 256
    block_length = 16 if smoke else 32
    if smoke:
        prompt_length = 8
    rows = run_modes(
        device,
        batch=batch,
        prompt_length=prompt_length,
        gen_length=gen_length,
        block_length=block_length,
        steps=gen_length // 4 if not gpu else gen_length // 2,
        repeats=1 if quick or smoke or not gpu else 3,
        config=model_config(gpu_scale, smoke),
    )
    shape = "LLaDA-8B shapes" if gpu_scale else "d 512, 6 layers, vocab 126464"
    if smoke:
        shape = "d 64, 2 layers, vocab 126464"
    return rows, {
        "model": shape,
        "batch": batch,
        "prompt_length": prompt_length,
        "gen_length": gen_length,
        "block_length": block_length,
    }


def report(rows: list[dict], meta: dict, device: torch.device) -> str:
    """The table ``main`` prints."""
    return (
        f"## Sampler on {machine_name(device)} ({meta['model']}, batch {meta['batch']}, prompt "
        f"{meta['prompt_length']}, gen_length {meta['gen_length']}, block "
        f"{meta['block_length']})\n\n"
        + format_table(
            rows,
            ["mode", "tokens/s", "speedup", "peak_MiB", "agreement"]
            + (["error"] if any("error" in row for row in rows) else []),
        )
        + "\n\nspeedup is against the reference loop in this run"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter generation, one repeat")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="prompts (GPU 4, CPU 1)")
    parser.add_argument("--prompt-length", type=int, default=32, help="prompt tokens")
    args = parser.parse_args(argv)
    if args.batch is not None and args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    device = torch.device(args.device)
    rows, meta = measure(
        device,
        quick=args.quick,
        gpu_scale=device.type == "cuda",
        batch=args.batch,
        prompt_length=args.prompt_length,
        smoke=args.smoke,
    )
    publish("sampler", device, rows, meta, report(rows, meta, device), write=not args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sampler throughput: LLaDA's reference loop against ``mosa.generate`` modes, in one run.

Same random-weight LLaDA-architecture model, same prompts, temperature 0. Rows: the
reference loop (full-sequence logits, float64 full-vocabulary softmax, per-row top-k; see
``baselines.py``), then ``generate`` with no cache, the prefix cache, the dual cache, and the
dual cache with threshold-0.9 parallel decoding. Each row gives generated tokens/s, peak
extra memory, the speed-up over the reference, and the fraction of response tokens equal to
the reference's output (1.0 = identical).

The CPU model keeps LLaDA's vocabulary (126464) on a small trunk (d 512, 6 layers); its head
weights are scaled up so that, like a trained model's, predictions are confident (random
N(0, 0.02) weights give near-uniform softmaxes, which no real model has). On a GPU it uses the
LLaDA-8B shapes. Usage: ``python benchmarks/sampler.py [--quick]``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import llada_reference_generate  # noqa: E402
from common import format_table, machine_name, median_seconds, profile_call, publish  # noqa: E402

from mosa.models import LLADA_8B, build_model  # noqa: E402
from mosa.sampling import generate  # noqa: E402

CPU_MODEL = dict(LLADA_8B, d_model=512, n_heads=8, n_kv_heads=8, n_layers=6, mlp_hidden_size=1536)
HEAD_SCALE = 40.0


def build(device: torch.device, gpu_scale: bool):
    config = dict(LLADA_8B) if gpu_scale else CPU_MODEL
    model = build_model(config, device=device).eval()
    with torch.no_grad():
        model.lm_head_weight.mul_(HEAD_SCALE)
    return model


def run_modes(device, *, batch, prompt_length, gen_length, block_length, steps, repeats, gpu_scale):
    model = build(device, gpu_scale)
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
    reference = None
    rows = []
    for name, run in modes.items():
        if device.type == "cuda":
            run()  # Triton compiles and autotunes on the first call: keep that out of the timing
        out, seconds, peak = profile_call(run, device)
        if repeats > 1:
            seconds = median_seconds(run, device, repeats=repeats, warmup=0)
        if reference is None:
            reference = out
        agreement = (out[:, prompt_length:] == reference[:, prompt_length:]).float().mean().item()
        rows.append(
            {
                "mode": name,
                "tokens/s": batch * gen_length / seconds,
                "seconds": seconds,
                "peak_MiB": peak / 2**20,
                "agreement": agreement,
            }
        )
    for row in rows:
        row["speedup"] = row["tokens/s"] / rows[0]["tokens/s"]
    return rows


def measure(device: torch.device, *, quick: bool, gpu_scale: bool) -> tuple[list, dict]:
    """Rows for every mode; ``gpu_scale``: the model has the LLaDA-8B shapes."""
    gpu = device.type == "cuda"
    gen_length = 128 if quick else 256
    rows = run_modes(
        device,
        batch=4 if gpu else 1,
        prompt_length=32,
        gen_length=gen_length,
        block_length=32,
        steps=gen_length // 4 if not gpu else gen_length // 2,
        repeats=1 if quick or not gpu else 3,
        gpu_scale=gpu_scale,
    )
    shape = "LLaDA-8B shapes" if gpu_scale else "d 512, 6 layers, vocab 126464"
    return rows, {"model": shape, "gen_length": gen_length, "block_length": 32}


def report(rows: list[dict], meta: dict, device: torch.device) -> str:
    """The table ``main`` prints."""
    return (
        f"## Sampler on {machine_name(device)} ({meta['model']}, gen_length "
        f"{meta['gen_length']}, block {meta['block_length']})\n\n"
        + format_table(rows, ["mode", "tokens/s", "speedup", "peak_MiB", "agreement"])
        + "\n\nspeedup is against the reference loop in this run"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter generation, one repeat")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows, meta = measure(device, quick=args.quick, gpu_scale=device.type == "cuda")
    publish("sampler", device, rows, meta, report(rows, meta, device))
    return 0


if __name__ == "__main__":
    sys.exit(main())

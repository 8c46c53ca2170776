"""MOSA end to end: ``mosa.align.train`` itself, from a prompt file to a checkpoint, timed.

The real data path: a prompt file (AdvBench's, when ``shared_data_dir()`` has it, else prompts
with a synthetic AdvBench-like length distribution), read by ``mosa.datasets.read_prompts``,
chat-templated and tokenized by the trainer, batched (grouped by length unless
``--no-group-by-length``), the objective, AdamW, ``metrics.jsonl``, a checkpoint half way and
the final adapter. The model is built from a preset with random weights
(``AlignConfig.random_init``), so no checkpoint folder is needed: LLaDA-8B shapes on a GPU, a
small LLaDA-architecture trunk with LLaDA's vocabulary on the CPU. The tokenizer is the
embedded tiny model's (word-level), so a prompt's token count is about its word count plus the
chat template; the table gives the mean. ``--family llada2``: LLaDA2-mini's shapes on a GPU
(the sampler benchmark's small LLaDA2 on the CPU), trained on ``block_generate``'s canvas under
block-causal attention (the family's default block, 32).

Reported: wall time of the whole ``train`` call for N prompts; prompts/s over the steps after
the first (warm-up); the projected time for 3,000 prompts at that rate; MFU, the model FLOPs
counted from the shapes (``step_flops``: the *active* projection weights, so for an MoE model
attention, router, shared expert and the top-k routed experts a token runs through, as
``benchmarks.roofline.ModelShape.active_matmul_parameters`` counts them) over the matmul peak
measured in this run (bf16 on a GPU, fp32 on the CPU); peak memory (CUDA: the allocator's peak; CPU: the process's resident
high-water mark). Usage: ``python -m benchmarks.align_end_to_end [--quick] [--smoke]
[--family llada|llada2] [--prompts N] [--batch B] [--no-group-by-length] [--device cpu]`` (``--smoke``: the quick model,
4 prompts in batches of 2, nothing written).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

import mosa.tiny
from benchmarks import sampler_llada2
from benchmarks.common import SMOKE_HELP, format_table, machine_name, publish
from benchmarks.roofline import ModelShape, matmul_flops
from mosa.align import AlignConfig, encode_sentences, train
from mosa.align.objective import window_span
from mosa.align.trainer import block_length_for
from mosa.datasets import read_prompts, shared_data_dir
from mosa.models import LLADA2_MINI, LLADA_8B, build_model
from mosa.text.prompts import encode_prompts, load_tokenizer

PAPER_PROMPTS = 3000
ADVBENCH = "advbench_harmful_behaviors.csv"
CPU_MODEL = dict(LLADA_8B, d_model=512, n_heads=8, n_kv_heads=8, n_layers=6, mlp_hidden_size=1536)
QUICK_MODEL = dict(LLADA_8B, d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=192)
MODELS = {  # family: (GPU, CPU, --quick) shapes
    "llada": (LLADA_8B, CPU_MODEL, QUICK_MODEL),
    "llada2": (LLADA2_MINI, sampler_llada2.CPU_MODEL, sampler_llada2.SMOKE_MODEL),
}
GPU_NAMES = {"llada": "LLaDA-8B shapes, bf16", "llada2": "LLaDA2-mini shapes, bf16"}
# AdvBench's goals have 5 to 30 words, about 12 on average.
SYNTHETIC_WORDS = (5, 20)


def prompt_file(folder: Path, n: int) -> tuple[Path, str]:
    """A prompt file of ``n`` prompts and where they come from: AdvBench's first ``n`` goals
    when the shared data has them, else tiny-corpus words in AdvBench-like lengths."""
    data = shared_data_dir()
    if data is not None and (data / ADVBENCH).is_file():
        prompts = read_prompts(data / ADVBENCH)
        source = "AdvBench"
    else:
        words = " ".join(mosa.tiny.align_prompts()[0]).split()
        draw = random.Random(0)
        prompts = [
            " ".join(draw.choices(words, k=draw.randint(*SYNTHETIC_WORDS))) for _ in range(n)
        ]
        source = "synthetic, AdvBench-like lengths"
    path = folder / "prompts.txt"
    path.write_text("\n".join((prompts * n)[:n]) + "\n")
    return path, source


def matmul_peak_flops(device: torch.device, quick: bool) -> float:
    """FLOP/s of one square matmul in this run: bf16 on CUDA, fp32 on the CPU."""
    size = (4096 if quick else 8192) if device.type == "cuda" else (512 if quick else 1024)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return matmul_flops(device, dtype, size=size, repeats=3 if quick else 10)


def model_shape(shape: dict) -> ModelShape:
    """The roofline's shape summary of a ``config.json`` dict."""
    return ModelShape.of(build_model(shape, device="meta").config)


def trunk_matmul_params(shape: dict) -> int:
    """The projection weights one token runs through (an MoE layer: attention, router, shared
    expert and its top-k routed experts): each costs 2 FLOPs per token forward."""
    return model_shape(shape).active_matmul_parameters


def mean_keys(length: float, block_length: int | None) -> float:
    """Keys a query attends to on average: all ``length`` of them, or under block-causal
    attention those up to its block's end."""
    if block_length is None:
        return length
    n = round(length)
    return sum(min(n, (p // block_length + 1) * block_length) for p in range(n)) / max(n, 1)


def step_flops(
    shape: dict,
    prompt_tokens: float,
    gen_length: int,
    scored_rows: int,
    block_length: int | None = None,
) -> float:
    """Model FLOPs of one prompt under LoRA: the policy forward, its activation-only backward
    (LoRA's own weight gradients are left out: r 32 adds < 1 %), the reference forward, and
    the head rows: ``scored_rows`` scored by ``token_logprobs`` plus the canvas's rows for the
    KL (policy and reference), forward, and the policy's rows backward. Attention scores and
    values count the keys each query sees (``block_length``: block-causal). Recomputation
    (gradient checkpointing, fused kernels' backward) is not counted."""
    summary = model_shape(shape)
    length = prompt_tokens + gen_length
    attention = 4 * summary.layers * length * mean_keys(length, block_length) * summary.q_width
    trunk = 2 * summary.active_matmul_parameters * length + attention
    head_row = 2 * summary.d * summary.vocab
    head = head_row * (scored_rows + 2 * gen_length) + head_row * (scored_rows + gen_length)
    return 3 * trunk + head


def mean_prompt_tokens(tokenizer, prompts: list[str]) -> float:
    """Tokens per prompt after the chat template, as the trainer encodes them."""
    lengths = [
        encode_prompts(tokenizer, [p], chat_template=True, device="cpu")[0].shape[1]
        for p in prompts
    ]
    return sum(lengths) / len(lengths)


def run(device: torch.device, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """One ``train`` call over ``args.prompts`` prompts; its row and settings."""
    gpu = device.type == "cuda"
    gpu_shape, cpu_shape, quick_shape = MODELS[args.family]
    shape = gpu_shape if gpu else (quick_shape if args.quick else cpu_shape)
    block_length = block_length_for(build_model(shape, device="meta"), None)
    gen_length, window = (32, (4, 12)) if args.quick else (128, (20, 60))
    sentences = mosa.tiny.align_sentences()
    with tempfile.TemporaryDirectory() as folder:
        path, source = prompt_file(Path(folder), args.prompts)
        prompts = read_prompts(path)
        steps = len(prompts) // args.batch
        config = AlignConfig(
            model=str(mosa.tiny.path()),
            random_init=shape,
            output_dir=str(Path(folder) / "run"),
            gen_length=gen_length,
            window=window,
            batch_size=args.batch,
            group_by_length=args.group_by_length,
            gradient_checkpointing=args.gradient_checkpointing,
            save_every=max(1, steps // 2),
            device=str(device),
            progress=False,
        )
        records: list[dict] = []
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        began = time.perf_counter()
        train(config, prompts, sentences=sentences, on_step=records.append)
        wall = time.perf_counter() - began
    timed = records[1:] or records
    step_seconds = sum(args.batch / r["prompts_per_s"] for r in timed)
    rate = len(timed) * args.batch / step_seconds
    tokenizer = load_tokenizer(mosa.tiny.path())
    longest = max(len(ids) for ids in sum(encode_sentences(tokenizer, sentences), []))
    scored = len(window_span(window, gen_length, longest))
    tokens = mean_prompt_tokens(tokenizer, prompts)
    flops = step_flops(shape, tokens, gen_length, scored, block_length)
    peak = matmul_peak_flops(device, args.quick)
    row = {
        "prompts": steps * args.batch,
        "wall_s": wall,
        "prompts/s": rate,
        "TFLOP/prompt": flops / 1e12,
        "MFU": flops * rate / peak,
        "matmul peak TFLOP/s": peak / 1e12,
        "peak_MiB": max(r["peak_memory_bytes"] for r in records) / 2**20,
        "projected s for 3000 prompts": PAPER_PROMPTS / rate,
    }
    summary = model_shape(shape)
    meta = {
        "family": args.family,
        "model": GPU_NAMES[args.family]
        if gpu
        else f"d {summary.d}, {summary.layers} layers, vocab {summary.vocab}, fp32"
        + (f", {summary.experts} experts top-{summary.top_k}" if summary.experts else ""),
        "block_length": block_length,
        "active matmul parameters": summary.active_matmul_parameters,
        "prompts source": source,
        "mean prompt tokens": tokens,
        "batch": args.batch,
        "gen_length": gen_length,
        "window": list(window),
        "group_by_length": args.group_by_length,
        "gradient_checkpointing": args.gradient_checkpointing,
        "lora_r": config.lora_r,
    }
    return [row], meta


def report(rows: list[dict], meta: dict, device: torch.device) -> str:
    """The table ``main`` prints."""
    columns = list(rows[0])
    return (
        f"## MOSA end to end on {machine_name(device)} ({meta['model']}, batch {meta['batch']}, "
        f"canvas {meta['gen_length']}, {meta['prompts source']} prompts of "
        f"{meta['mean prompt tokens']:.1f} tokens, grouped by length: "
        f"{meta['group_by_length']})\n\n"
        + format_table(rows, columns)
        + "\n\nprompts/s over the steps after the first; MFU: model FLOPs (step_flops) over the "
        "matmul peak measured in this run"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few prompts, a small model")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompts", type=int, help="prompts to train on (256 GPU, 32 CPU, 8)")
    parser.add_argument("--batch", type=int, help="prompts per step (8 GPU, 4 CPU)")
    parser.add_argument("--no-group-by-length", dest="group_by_length", action="store_false")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--family", choices=list(MODELS), default="llada", help="model family")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.quick = args.quick or args.smoke
    args.batch = args.batch or (2 if args.smoke else 8 if gpu else 4)
    args.prompts = args.prompts or (4 if args.smoke else 256 if gpu else 8 if args.quick else 32)
    if args.prompts < 2 * args.batch:
        raise SystemExit(f"--prompts {args.prompts}: give at least two batches ({2 * args.batch})")
    rows, meta = run(device, args)
    table = report(rows, meta, device)
    name = "align_end_to_end" if args.family == "llada" else f"align_end_to_end-{args.family}"
    publish(name, device, rows, meta, table, write=not args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())

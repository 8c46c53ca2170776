"""Vocabulary ops side by side with the reference algorithms, in one run.

(a) One denoising step: token choice + confidence + selection on the same logits
    ``[B*L, V]`` (B=4, L=512; bf16 on a GPU, as a bf16 model makes them, fp32 on the CPU).
    Baseline: LLaDA's reference step (float64 softmax over the whole sequence, gather, a
    ``torch.topk`` loop over rows).
    ``--quick`` measures V=126464 only (the size docs/DESIGN.md §10's target names); ``--smoke``
    B=1, L=64, V=1024.
(b) ``token_logprobs`` forward + backward at N=4096, d=1024, V=32768 (``--gpu-scale``: docs/DESIGN.md
    §10's N=8192, d=4096, V=126464). Baseline: naive ``log_softmax(h @ W.T).gather``; once with
    a frozen head (gradient w.r.t. hidden, MOSA's LoRA case) and once with a trainable head
    (``--smoke``: N=64, d=32, V=1024).

Each row gives the median time and the peak extra memory, and their ratios against the
baseline measured in the same run. Usage: ``python -m benchmarks.kernels [--quick] [--gpu-scale] [--smoke]``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from contextlib import contextmanager

import torch

from benchmarks.baselines import llada_reference_step
from benchmarks.common import (
    SMOKE_HELP,
    format_table,
    machine_name,
    median_seconds,
    peak_bytes,
    publish,
)
from mosa_kernels import (
    available_backends,
    backend_name,
    sample_tokens,
    select_transfer,
    token_logprobs,
)

SELECT_SHAPE = {"batch": 4, "length": 512}
TARGET_VOCAB = 126464
LOGPROB_SHAPE = {"n": 4096, "d": 1024, "vocab": 32768}
DESIGN_LOGPROB_SHAPE = {"n": 8192, "d": 4096, "vocab": TARGET_VOCAB}
SMOKE_SELECT_SHAPE = {"batch": 1, "length": 64}
SMOKE_VOCAB = 1024
SMOKE_LOGPROB_SHAPE = {"n": 64, "d": 32, "vocab": SMOKE_VOCAB}


def select_logits_dtype(device: torch.device) -> torch.dtype:
    """The dtype a model hands the step its logits in: bf16 on a GPU, fp32 on the CPU."""
    return torch.float32 if device.type == "cpu" else torch.bfloat16


@contextmanager
def forced_backend(name: str):
    previous = os.environ.get("MOSA_BACKEND")
    os.environ["MOSA_BACKEND"] = name
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MOSA_BACKEND", None)
        else:
            os.environ["MOSA_BACKEND"] = previous


def benchmark_backends(device: torch.device) -> list[str]:
    # The Triton interpreter is a correctness tool, not something to time.
    return [b for b in available_backends(device) if not (b == "triton" and device.type == "cpu")]


def fused_step(logits, mask_index, block_end, num_transfer):
    batch, length, vocab = logits.shape
    tokens, confidence = sample_tokens(logits.view(batch * length, vocab))
    in_block = torch.arange(length, device=logits.device) < block_end
    transfer = select_transfer(
        confidence.view(batch, length), mask_index & in_block, k=num_transfer
    )
    return tokens.view(batch, length), transfer


def select_step_rows(device, vocab_sizes, batch, length, repeats):
    rows = []
    for vocab in vocab_sizes:
        gen = torch.Generator(device="cpu").manual_seed(0)
        logits = (torch.randn(batch, length, vocab, generator=gen) * 4).to(
            device, select_logits_dtype(device)
        )
        mask_index = torch.zeros(batch, length, dtype=torch.bool, device=device)
        mask_index[:, length // 2 :] = True
        block_end = length // 2 + 32
        num_transfer = torch.full((batch,), 2, dtype=torch.int64, device=device)
        args = (logits, mask_index, block_end, num_transfer)
        base_t, base_m = _measure(functools.partial(llada_reference_step, *args), device, repeats)
        expected = llada_reference_step(*args)
        rows.append(
            _row("select step", f"V={vocab}", "llada-reference", base_t, base_m, base_t, base_m)
        )
        for backend in benchmark_backends(device):
            with forced_backend(backend):
                got = fused_step(*args)
                same = bool((got[0] == expected[0]).all() and (got[1] == expected[1]).all())
                t, m = _measure(functools.partial(fused_step, *args), device, repeats)
            rows.append(_row("select step", f"V={vocab}", backend, t, m, base_t, base_m, same))
        del logits
    return rows


def _naive_logprobs(hidden, weight, targets):
    return torch.log_softmax(hidden @ weight.T, dim=-1).gather(1, targets[:, None])[:, 0]


def _forward_backward(logprobs_fn, hidden, weight, targets, upstream):
    hidden.grad = weight.grad = None
    (logprobs_fn(hidden, weight, targets) * upstream).sum().backward()


def _measure(fn, device, repeats):
    return median_seconds(fn, device, repeats), peak_bytes(fn, device)


def logprob_rows(device, n, d, vocab, repeats):
    rows = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    base_hidden = (torch.randn(n, d, generator=gen) / d**0.5).to(device)
    base_weight = torch.randn(vocab, d, generator=gen).to(device)
    targets = torch.randint(0, vocab, (n,), generator=gen).to(device)
    upstream = torch.randn(n, generator=gen).to(device)
    for head in ("frozen head", "trainable head"):
        hidden = base_hidden.clone().requires_grad_(True)
        weight = base_weight.clone().requires_grad_(head == "trainable head")
        tensors = (hidden, weight, targets, upstream)
        naive = functools.partial(_forward_backward, _naive_logprobs, *tensors)
        base_t, base_m = _measure(naive, device, repeats)
        rows.append(_row("token_logprobs fwd+bwd", head, "naive", base_t, base_m, base_t, base_m))
        for backend in benchmark_backends(device):
            with forced_backend(backend):
                fused = functools.partial(_forward_backward, token_logprobs, *tensors)
                t, m = _measure(fused, device, repeats)
            rows.append(_row("token_logprobs fwd+bwd", head, backend, t, m, base_t, base_m))
    return rows


def _row(op, case, impl, seconds, peak, base_seconds, base_peak, same=None):
    row = {
        "op": op,
        "case": case,
        "impl": impl,
        "ms": seconds * 1e3,
        "speedup": base_seconds / seconds,
        "peak_MiB": peak / 2**20,
        "peak_ratio": peak / base_peak if base_peak else float("nan"),
    }
    if same is not None:
        row["same_output"] = same
    return row


def measure(
    device: torch.device, *, quick: bool, gpu_scale: bool = False, smoke: bool = False
) -> tuple[list, dict]:
    """All rows, and the shapes and default backend they were measured with.

    ``gpu_scale`` times ``token_logprobs`` at docs/DESIGN.md §10's shape instead of the small one;
    ``smoke``: tiny shapes, one repeat.
    """
    repeats = 1 if smoke else 3 if quick or device.type == "cpu" else 10
    vocab_sizes = [TARGET_VOCAB] if quick else [32768, TARGET_VOCAB]
    select_shape = SMOKE_SELECT_SHAPE if smoke else SELECT_SHAPE
    if smoke:
        vocab_sizes = [SMOKE_VOCAB]
    rows = select_step_rows(device, vocab_sizes, repeats=repeats, **select_shape)
    shape = DESIGN_LOGPROB_SHAPE if gpu_scale else LOGPROB_SHAPE
    if smoke:
        shape = SMOKE_LOGPROB_SHAPE
    rows += logprob_rows(device, repeats=repeats, **shape)
    meta = {
        "backend": backend_name(device),
        "select_rows": select_shape["batch"] * select_shape["length"],
        "select_case": f"B={select_shape['batch']}, L={select_shape['length']}, "
        f"{str(select_logits_dtype(device)).removeprefix('torch.')} logits",
        "logprob_case": f"N={shape['n']}, d={shape['d']}, V={shape['vocab']}",
    }
    return rows, meta


def report(rows: list[dict], meta: dict, device: torch.device) -> str:
    """The table ``main`` prints."""
    columns = ["op", "case", "impl", "ms", "speedup", "peak_MiB", "peak_ratio", "same_output"]
    return (
        f"## Vocabulary kernels on {machine_name(device)}\n\n"
        f"select step: {meta['select_case']}; token_logprobs: {meta['logprob_case']}\n\n"
        f"{format_table(rows, columns)}\n\n"
        "speedup and peak_ratio are against the first row of each case"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="V=126464 only, fewer repeats")
    parser.add_argument(
        "--gpu-scale", action="store_true", help="token_logprobs at N=8192, d=4096, V=126464"
    )
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows, meta = measure(device, quick=args.quick, gpu_scale=args.gpu_scale, smoke=args.smoke)
    publish("kernels", device, rows, meta, report(rows, meta, device), write=not args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Routed experts of one MoE layer: grouped GEMMs against a per-expert loop and a dense pass.

LLaDA2-mini's layer shape (d 2048, I 512, E 256, top-8 of 4 kept groups out of 8), bf16, at
N = 32 tokens (a sampler step's block) and N = 1024 (a prefill or a training batch), on the
same routing (``route_grouped_sigmoid`` on random hidden states and gate weights):

- ``grouped``: ``moe_swiglu(path="grouped")``, three ``torch._grouped_mm`` calls over tokens
  sorted by expert (what the models run on a GPU); ``grouped fwd+bwd``: with the gradient
  w.r.t. the hidden states (the MOSA trainer's path to attention's LoRA adapters);
  ``grouped graph``: the router and the grouped experts replayed as one CUDA graph, which shows
  that the path has no host synchronisation (the capture would fail on one) and what the
  launches cost.
- ``loop``: the published ``moe_infer`` algorithm, one GEMM chain per expert that got tokens
  (``moe_expert_loop``; its per-expert counts are read on the host).
- ``dense``: every expert on every token as three batched matmuls, the unselected ones
  weighted 0 (reads every expert, computes E / k times the useful work).

Columns: median ms; the experts the routing touches; the bytes of expert weights a path must
read (touched experts for grouped and loop, all of them for dense); that over the time, as a
share of the card's copy bandwidth measured in the same run (``roofline.measure_peaks``); the
useful TFLOP/s (N·k·3·2·I·d); the speedup against the loop. CUDA only: a CPU run needs
``--smoke`` (tiny shapes, one repeat, nothing written), which only shows that the script runs.
The choice between ``torch._grouped_mm`` and a Triton grouped GEMM rests on these figures
(docs/DESIGN.md §4.4). Run: ``python -m benchmarks.moe [--smoke] [--tokens N ...]``.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from benchmarks.common import SMOKE_HELP, format_table, machine_name, median_seconds, publish
from benchmarks.roofline import measure_peaks
from mosa_kernels import moe_expert_loop, moe_swiglu, route_grouped_sigmoid

LLADA2_MINI = {
    "d": 2048,
    "inner": 512,
    "experts": 256,
    "top_k": 8,
    "n_group": 8,
    "topk_group": 4,
    "scale": 2.5,
}
SMOKE = {
    "d": 32,
    "inner": 16,
    "experts": 12,
    "top_k": 3,
    "n_group": 4,
    "topk_group": 2,
    "scale": 2.5,
}
GPU_TOKENS = (32, 1024)
SMOKE_TOKENS = (5, 17)
COLUMNS = [
    "tokens",
    "path",
    "ms",
    "experts touched",
    "weights MiB read",
    "GB/s",
    "% copy bandwidth",
    "TFLOP/s",
    "speedup vs loop",
]


class Layer:
    """Random weights of one layer and a routing of random hidden states through it."""

    def __init__(self, shape: dict, tokens: int, dtype: torch.dtype, device: torch.device):
        gen = torch.Generator(device=device).manual_seed(tokens)
        d, inner, experts = shape["d"], shape["inner"], shape["experts"]

        def randn(*size, scale):
            return (torch.randn(size, generator=gen, device=device) * scale).to(dtype)

        self.shape, self.tokens = shape, tokens
        self.x = randn(tokens, d, scale=1.0)
        self.gate_weight = randn(experts, d, scale=d**-0.5)
        self.expert_bias = torch.randn(experts, generator=gen, device=device) * 0.01
        self.gate = randn(experts, inner, d, scale=d**-0.5)
        self.up = randn(experts, inner, d, scale=d**-0.5)
        self.down = randn(experts, d, inner, scale=inner**-0.5)
        self.ids, self.weights = self.route()

    def route(self):
        logits = F.linear(self.x.float(), self.gate_weight.float())
        return route_grouped_sigmoid(
            logits,
            self.expert_bias,
            top_k=self.shape["top_k"],
            n_group=self.shape["n_group"],
            topk_group=self.shape["topk_group"],
            routed_scaling_factor=self.shape["scale"],
        )

    def grouped(self):
        return moe_swiglu(
            self.x, self.ids, self.weights, self.gate, self.up, self.down, path="grouped"
        )

    def routed_grouped(self):
        """Router and experts: the step a CUDA graph captures."""
        ids, weights = self.route()
        return moe_swiglu(self.x, ids, weights, self.gate, self.up, self.down, path="grouped")

    def grouped_backward(self):
        x = self.x.detach().requires_grad_(True)
        out = moe_swiglu(x, self.ids, self.weights, self.gate, self.up, self.down, path="grouped")
        return torch.autograd.grad(out, x, torch.ones_like(out))

    def loop(self):
        experts = [
            lambda rows, e=e: F.linear(
                F.silu(F.linear(rows, self.gate[e])) * F.linear(rows, self.up[e]), self.down[e]
            )
            for e in range(self.shape["experts"])
        ]
        return moe_expert_loop(self.x, self.ids, self.weights, experts)

    def dense(self):
        experts = self.shape["experts"]
        x = self.x.expand(experts, *self.x.shape)
        hidden = F.silu(torch.bmm(x, self.gate.transpose(1, 2))) * torch.bmm(
            x, self.up.transpose(1, 2)
        )
        out = torch.bmm(hidden, self.down.transpose(1, 2))  # [E, N, d]
        dense_weights = torch.zeros(self.tokens, experts, device=self.x.device)
        dense_weights.scatter_(1, self.ids, self.weights)
        return torch.einsum("end,ne->nd", out.float(), dense_weights).to(self.x.dtype)

    def touched(self) -> int:
        return int(torch.unique(self.ids).numel())

    def expert_bytes(self, experts: int) -> int:
        return experts * 3 * self.shape["inner"] * self.shape["d"] * self.x.element_size()

    def useful_flops(self) -> float:
        return self.tokens * self.shape["top_k"] * 3 * 2 * self.shape["inner"] * self.shape["d"]


def graph_replay(layer: Layer):
    """``(replay, error)``: a CUDA graph of the router and grouped experts, checked against the
    eager result, or the reason it could not be captured."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        layer.routed_grouped()  # warm-up off the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            static = layer.routed_grouped()
    except RuntimeError as error:
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    graph.replay()
    torch.cuda.synchronize()
    eager = layer.routed_grouped()
    if not torch.allclose(static.float(), eager.float(), rtol=1e-2, atol=1e-2):
        return None, "the replay differs from the eager call"
    return graph.replay, None


def shape_rows(layer: Layer, device, repeats: int, bandwidth: float | None) -> tuple[list, dict]:
    touched = layer.touched()
    expected = layer.loop()
    notes = {}
    paths = {"loop": layer.loop, "grouped": layer.grouped, "dense": layer.dense}
    if device.type == "cuda":
        replay, error = graph_replay(layer)
        if replay is None:
            notes[f"graph N={layer.tokens}"] = error
        else:
            paths["grouped graph"] = replay
    for name in ("grouped", "dense"):
        got = paths[name]()
        err = (got.float() - expected.float()).abs().max() / expected.float().abs().max()
        notes[f"{name} vs loop rel. diff N={layer.tokens}"] = float(err)
    paths["grouped fwd+bwd"] = layer.grouped_backward
    times = {name: median_seconds(fn, device, repeats=repeats) for name, fn in paths.items()}
    rows = []
    for name, seconds in times.items():
        read = layer.expert_bytes(layer.shape["experts"] if name == "dense" else touched)
        flops = layer.useful_flops() * (3 if name == "grouped fwd+bwd" else 1)
        rows.append(
            {
                "tokens": layer.tokens,
                "path": name,
                "ms": seconds * 1e3,
                "experts touched": touched,
                "weights MiB read": read / 2**20,
                "GB/s": read / seconds / 1e9,
                "% copy bandwidth": "" if bandwidth is None else 100 * read / seconds / bandwidth,
                "TFLOP/s": flops / seconds / 1e12,
                "speedup vs loop": times["loop"] / seconds,
            }
        )
    return rows, notes


def measure(device: torch.device, *, smoke: bool, tokens=None) -> tuple[list, dict]:
    shape = SMOKE if smoke else LLADA2_MINI
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    repeats = 1 if smoke else 20
    bandwidth = None
    if device.type == "cuda":
        bandwidth = measure_peaks(device, dtype, copy_bytes=1 << 30, matmul_size=4096).bandwidth
    rows, notes = [], {}
    for n in tokens or (SMOKE_TOKENS if smoke else GPU_TOKENS):
        shape_rows_, shape_notes = shape_rows(
            Layer(shape, n, dtype, device), device, repeats, bandwidth
        )
        rows += shape_rows_
        notes.update(shape_notes)
    meta = {
        "shape": shape,
        "dtype": str(dtype),
        "copy GB/s": None if bandwidth is None else bandwidth / 1e9,
        "notes": notes,
    }
    return rows, meta


def report(rows: list[dict], meta: dict, device: torch.device) -> str:
    shape = meta["shape"]
    bandwidth = meta["copy GB/s"]
    text = (
        f"MoE experts, {meta['dtype']}, d={shape['d']}, I={shape['inner']}, E={shape['experts']}, "
        f"top-{shape['top_k']} of {shape['topk_group']}/{shape['n_group']} groups, "
        f"{machine_name(device)}"
        + ("" if bandwidth is None else f", copy bandwidth {bandwidth:.0f} GB/s")
        + "\n"
        + format_table(rows, COLUMNS)
    )
    for key, value in meta["notes"].items():
        text += f"\n{key}: {value:.2e}" if isinstance(value, float) else f"\n{key}: {value}"
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--tokens", type=int, nargs="+", help="token counts (default 32 1024)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        print("benchmarks.moe measures a CUDA GPU; on a CPU run it with --smoke")
        return 1
    rows, meta = measure(device, smoke=args.smoke, tokens=args.tokens)
    publish("moe", device, rows, meta, report(rows, meta, device), write=not args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())

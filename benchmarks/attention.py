"""Masked attention, forward and forward+backward, against SDPA (docs/DESIGN.md §10).

On a GPU: bf16, D = 128, B = 8 x L = 2048 tokens, with 32/32 heads and Dream's 28/4 (GQA).
Without padding the baseline is SDPA's flash backend (no mask); with 30 % left padding on every
item it is SDPA with the boolean key mask, on whatever backend SDPA picks for it. The baseline
gets K/V already expanded to all q heads (the expansion is not timed; its gradient is not
summed back over the group), which favours it slightly.

Block-causal rows (LLaDA2's block diffusion; on a GPU, not ``--quick``): LLaDA2-mini's heads
(16 q / 4 kv, D 128), block 32, no padding, B 8: the whole sequence of 1024 (``Lq/Lk``
1024/1024) and one block's 32 queries over 1024 cached keys (32/1024). The baseline is SDPA
with the block-causal boolean mask.

TFLOP/s count the useful work: every query row against the keys it may attend only (the valid
ones, in blocks no later than its own), 4·D per query-key pair and head for the forward and 3.5
times that for forward+backward (2 products forward, 5 backward). Both columns use the same
count, so their ratio is the speed ratio.

On a CPU both sides run the torch reference; the script then times one small case to show
that it works and says that the figures need a GPU. ``--smoke``: B 1, L 32, D 16, 4/2 heads,
and block-causal rows at block 8 (32/32 and 8/32).

Run: ``python -m benchmarks.attention [--quick] [--smoke]`` (``--quick``: 32/32 heads, no
block-causal rows).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.common import (
    SMOKE_HELP,
    format_table,
    machine_name,
    median_seconds,
    peak_bytes,
    publish,
)
from mosa_kernels import attention, backend_name
from mosa_kernels.torch_kernels import _block_causal

GPU_SHAPE = {"batch": 8, "seqlen": 2048, "head_dim": 128}
GPU_HEADS = [(32, 32), (28, 4)]
CPU_SHAPE = {"batch": 2, "seqlen": 256, "head_dim": 64}
CPU_HEADS = [(8, 2)]
SMOKE_SHAPE = {"batch": 1, "seqlen": 32, "head_dim": 16}
SMOKE_HEADS = [(4, 2)]
PADDINGS = [0.0, 0.3]
TARGETS = {0.0: "≥ 0.9× SDPA-flash", 0.3: "≥ 1.3× (H100)"}
# Block-causal rows: (Lq, Lk) cases at one head layout and block length.
GPU_BLOCK_CAUSAL = {"batch": 8, "head_dim": 128, "heads": (16, 4), "block_length": 32,
                    "lengths": [(1024, 1024), (32, 1024)]}  # fmt: skip
SMOKE_BLOCK_CAUSAL = {"batch": 1, "head_dim": 16, "heads": (4, 2), "block_length": 8,
                      "lengths": [(32, 32), (8, 32)]}  # fmt: skip
BIDIRECTIONAL = "bidirectional"
COLUMNS = [
    "attention",
    "heads",
    "Lq/Lk",
    "padding",
    "pass",
    "mosa ms",
    "SDPA ms",
    "speedup",
    "mosa TFLOP/s",
    "SDPA TFLOP/s",
    "mosa peak MiB",
    "SDPA peak MiB",
    "target (fwd+bwd)",
]


def _inputs(batch, query_length, seqlen, q_heads, kv_heads, head_dim, padding, dtype, device):
    """q of ``query_length`` rows, k/v of ``seqlen``, and the key mask of ``padding`` left
    padding on every item (None without padding)."""
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(length, heads):
        shape = (batch, length, heads, head_dim)
        return torch.randn(shape, generator=gen, device=device, dtype=dtype)

    q, k, v = randn(query_length, q_heads), randn(seqlen, kv_heads), randn(seqlen, kv_heads)
    pad = round(padding * seqlen)
    key_valid = None
    if pad:
        key_valid = (torch.arange(seqlen, device=device) >= pad).repeat(batch, 1)
    return q, k, v, key_valid


def _mosa_step(q, k, v, key_valid, block_length, grad_out):
    """Forward only when ``grad_out`` is None, else forward and backward."""
    if grad_out is None:
        return lambda: attention(q, k, v, key_valid, block_length=block_length)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]

    def step():
        out = attention(*leaves, key_valid, block_length=block_length)
        return torch.autograd.grad(out, leaves, grad_out)

    return step


def _sdpa_step(q, k, v, allowed, grad_out):
    """SDPA in its own [B, H, L, D] layout: transposed views, K/V expanded to the q heads;
    ``allowed`` ``bool[B or 1, Lq or 1, Lk]`` or None (every key)."""
    group = q.shape[2] // k.shape[2]
    qh = q.transpose(1, 2)
    kh = k.repeat_interleave(group, dim=2).transpose(1, 2)
    vh = v.repeat_interleave(group, dim=2).transpose(1, 2)
    mask = None if allowed is None else allowed[:, None]
    force_flash = mask is None and q.is_cuda
    grad_h = None if grad_out is None else grad_out.transpose(1, 2)

    def forward(qh, kh, vh):
        if force_flash:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(qh, kh, vh)
        return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)

    if grad_h is None:
        return lambda: forward(qh, kh, vh)
    leaves = [t.detach().requires_grad_() for t in (qh, kh, vh)]
    return lambda: torch.autograd.grad(forward(*leaves), leaves, grad_h)


def shape_rows(
    batch, seqlen, head_dim, heads, padding, dtype, device, repeats,
    query_length=None, block_length=None,
):  # fmt: skip
    """Rows for one shape: the forward and the forward+backward, mosa against SDPA.
    ``query_length`` (default ``seqlen``): the sequence's last queries; ``block_length``:
    block-causal (None: bidirectional)."""
    q_heads, kv_heads = heads
    query_length = query_length or seqlen
    q, k, v, key_valid = _inputs(
        batch, query_length, seqlen, q_heads, kv_heads, head_dim, padding, dtype, device
    )
    allowed = None  # bool [B or 1, Lq or 1, Lk]
    if block_length:
        allowed = _block_causal(key_valid, block_length, query_length, seqlen, device)
    elif key_valid is not None:
        allowed = key_valid[:, None, :]
    pairs = batch * query_length * seqlen
    if allowed is not None:
        pairs = int(allowed.expand(batch, query_length, seqlen).sum())
    grad_out = torch.randn_like(q)
    forward_flops = 4 * q_heads * head_dim * pairs
    rows = []
    for name, grad, flops in (
        ("fwd", None, forward_flops),
        ("fwd+bwd", grad_out, 3.5 * forward_flops),
    ):
        mosa = _mosa_step(q, k, v, key_valid, block_length, grad)
        sdpa = _sdpa_step(q, k, v, allowed, grad)
        mosa_s = median_seconds(mosa, device, repeats=repeats)
        sdpa_s = median_seconds(sdpa, device, repeats=repeats)
        target = TARGETS[padding] if name == "fwd+bwd" and q.is_cuda and not block_length else ""
        rows.append(
            {
                "attention": f"block-causal {block_length}" if block_length else BIDIRECTIONAL,
                "heads": f"{q_heads}/{kv_heads}",
                "Lq/Lk": f"{query_length}/{seqlen}",
                "padding": f"{padding:.0%}",
                "pass": name,
                "mosa ms": mosa_s * 1e3,
                "SDPA ms": sdpa_s * 1e3,
                "speedup": sdpa_s / mosa_s,
                "mosa TFLOP/s": flops / mosa_s / 1e12,
                "SDPA TFLOP/s": flops / sdpa_s / 1e12,
                "mosa peak MiB": peak_bytes(mosa, device) / 2**20,
                "SDPA peak MiB": peak_bytes(sdpa, device) / 2**20,
                "target (fwd+bwd)": target,
            }
        )
    return rows


def measure(device: torch.device, *, quick: bool, smoke: bool = False) -> tuple[list, dict]:
    """Rows for every head layout and padding, then the block-causal rows (GPU and smoke only);
    ``quick``: 32/32 heads only, no block-causal rows, fewer repeats; ``smoke``: tiny shapes,
    one repeat."""
    on_gpu = device.type == "cuda"
    shape = GPU_SHAPE if on_gpu else CPU_SHAPE
    heads_list = GPU_HEADS if on_gpu else CPU_HEADS
    if quick:
        heads_list = heads_list[:1]
    if smoke:
        shape, heads_list = SMOKE_SHAPE, SMOKE_HEADS
    dtype = torch.bfloat16 if on_gpu else torch.float32
    repeats = 1 if smoke else 5 if quick or not on_gpu else 10
    rows = []
    for heads in heads_list:
        for padding in PADDINGS:
            rows.extend(
                shape_rows(
                    **shape,
                    heads=heads,
                    padding=padding,
                    dtype=dtype,
                    device=device,
                    repeats=repeats,
                )
            )
    # Not in a quick run: autotuning the block-causal kernels would not fit run_all's limit.
    block_causal = SMOKE_BLOCK_CAUSAL if smoke else None
    if on_gpu and not quick and not smoke:
        block_causal = GPU_BLOCK_CAUSAL
    if block_causal is not None:
        settings = {
            key: block_causal[key] for key in ("batch", "head_dim", "heads", "block_length")
        }
        for query_length, seqlen in block_causal["lengths"]:
            rows.extend(
                shape_rows(
                    **settings,
                    seqlen=seqlen,
                    query_length=query_length,
                    padding=0.0,
                    dtype=dtype,
                    device=device,
                    repeats=repeats,
                )
            )
    meta = {"shape": shape, "dtype": str(dtype), "backend": backend_name(device), "quick": quick}
    return rows, meta


def report(rows: list[dict], meta: dict, device: torch.device) -> str:
    """The table ``main`` prints."""
    shape = meta["shape"]
    text = (
        f"attention, {meta['dtype']}, bidirectional rows B={shape['batch']}, "
        f"L={shape['seqlen']}, D={shape['head_dim']}, mosa backend: {meta['backend']}, "
        f"{machine_name(device)}\n" + format_table(rows, COLUMNS)
    )
    if device.type != "cuda":
        text += (
            "\n\nNo CUDA GPU: both sides ran the torch reference on a small case. "
            "The speed figures and targets need a GPU."
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="32/32 heads only, no block-causal rows, fewer repeats (under a minute)",
    )
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows, meta = measure(device, quick=args.quick, smoke=args.smoke)
    publish("attention", device, rows, meta, report(rows, meta, device), write=not args.smoke)


if __name__ == "__main__":
    main()

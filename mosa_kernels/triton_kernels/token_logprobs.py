"""``logprob_rows`` and ``kl_rows`` in Triton: one program per row, two passes over it.

Semantics are those of ``mosa_kernels.torch_kernels``. The first pass finds the row maximum,
the second sums exponentials against it; the optional third writes probabilities or
gradients back into the logits buffer, so a chunk of logits never needs a second buffer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import vocab_block

_STATS, _PROBS, _GRAD = 0, 1, 2


@triton.jit
def _logprob_rows_kernel(
    logits_ptr, targets_ptr, grad_ptr, logp_ptr, lse_ptr,
    n_cols, n_targets, inv_temperature, ignore_index,
    MODE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    row_logits = logits_ptr + row.to(tl.int64) * n_cols
    lanes = tl.arange(0, BLOCK)
    running_max = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(0, n_cols, BLOCK):
        offs = start + lanes
        z = tl.load(row_logits + offs, mask=offs < n_cols, other=float("-inf")).to(tl.float32)
        running_max = tl.maximum(running_max, z * inv_temperature)
    top = tl.max(running_max, axis=0)
    sums = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        offs = start + lanes
        z = tl.load(row_logits + offs, mask=offs < n_cols, other=float("-inf")).to(tl.float32)
        sums += tl.exp(z * inv_temperature - top)
    lse = top + tl.log(tl.sum(sums, axis=0))
    tl.store(lse_ptr + row, lse)

    grad_total = 0.0
    for j in range(n_targets):
        target = tl.load(targets_ptr + row * n_targets + j)
        keep = target != ignore_index
        picked = tl.load(row_logits + tl.where(keep, target, 0)).to(tl.float32)
        tl.store(
            logp_ptr + row * n_targets + j, tl.where(keep, picked * inv_temperature - lse, 0.0)
        )
        if MODE == 2:
            grad_total += tl.where(keep, tl.load(grad_ptr + row * n_targets + j), 0.0)

    if MODE != 0:
        for start in range(0, n_cols, BLOCK):
            offs = start + lanes
            in_row = offs < n_cols
            z = tl.load(row_logits + offs, mask=in_row, other=0.0).to(tl.float32)
            p = tl.exp(z * inv_temperature - lse)
            if MODE == 1:
                out = p
            else:
                # The one-hot part adds each target's gradient at its column (repeats add up).
                out = -grad_total * p
                for j in range(n_targets):
                    target = tl.load(targets_ptr + row * n_targets + j)
                    g = tl.load(grad_ptr + row * n_targets + j)
                    out += tl.where((offs == target) & (target != ignore_index), g, 0.0)
                out = out * inv_temperature
            tl.store(row_logits + offs, out.to(logits_ptr.dtype.element_ty), mask=in_row)


def logprob_rows(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    ignore_index: int,
    grad: torch.Tensor | None,
    write_probs: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """See ``mosa_kernels.torch_kernels.logprob_rows``."""
    n, width = logits.shape
    if not (logits.is_contiguous() and targets.is_contiguous()):
        raise ValueError("logprob_rows needs contiguous logits and targets")
    logp = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
    lse = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n == 0:
        return logp, lse
    mode = _GRAD if grad is not None else (_PROBS if write_probs else _STATS)
    grad = grad.contiguous() if grad is not None else lse
    _logprob_rows_kernel[(n,)](
        logits, targets, grad, logp, lse, width, targets.shape[1], 1.0 / temperature,
        ignore_index, MODE=mode, BLOCK=vocab_block(width),
    )  # fmt: skip
    return logp, lse


@triton.jit
def _kl_rows_kernel(
    logits_ptr, ref_ptr, grad_ptr, kl_ptr, n_cols, WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0)
    row_logits = logits_ptr + row.to(tl.int64) * n_cols
    row_ref = ref_ptr + row.to(tl.int64) * n_cols
    lanes = tl.arange(0, BLOCK)
    max_p = tl.full([BLOCK], float("-inf"), tl.float32)
    max_q = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(0, n_cols, BLOCK):
        offs = start + lanes
        in_row = offs < n_cols
        max_p = tl.maximum(
            max_p, tl.load(row_logits + offs, mask=in_row, other=float("-inf")).to(tl.float32)
        )
        max_q = tl.maximum(
            max_q, tl.load(row_ref + offs, mask=in_row, other=float("-inf")).to(tl.float32)
        )
    top_p = tl.max(max_p, axis=0)
    top_q = tl.max(max_q, axis=0)
    sum_p = tl.zeros([BLOCK], dtype=tl.float32)
    sum_q = tl.zeros([BLOCK], dtype=tl.float32)
    weighted_diff = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        offs = start + lanes
        in_row = offs < n_cols
        z = tl.load(row_logits + offs, mask=in_row, other=0.0).to(tl.float32)
        zr = tl.load(row_ref + offs, mask=in_row, other=0.0).to(tl.float32)
        e = tl.where(in_row, tl.exp(z - top_p), 0.0)
        sum_p += e
        sum_q += tl.where(in_row, tl.exp(zr - top_q), 0.0)
        weighted_diff += e * (z - zr)
    total_p = tl.sum(sum_p, axis=0)
    lse_p = top_p + tl.log(total_p)
    lse_q = top_q + tl.log(tl.sum(sum_q, axis=0))
    mean_diff = tl.sum(weighted_diff, axis=0) / total_p
    tl.store(kl_ptr + row, mean_diff - (lse_p - lse_q))
    if WRITE_GRAD:
        g = tl.load(grad_ptr + row)
        for start in range(0, n_cols, BLOCK):
            offs = start + lanes
            in_row = offs < n_cols
            z = tl.load(row_logits + offs, mask=in_row, other=0.0).to(tl.float32)
            zr = tl.load(row_ref + offs, mask=in_row, other=0.0).to(tl.float32)
            out = g * tl.exp(z - lse_p) * (z - zr - mean_diff)
            tl.store(row_logits + offs, out.to(logits_ptr.dtype.element_ty), mask=in_row)


def kl_rows(
    logits: torch.Tensor, ref_logits: torch.Tensor, grad: torch.Tensor | None
) -> torch.Tensor:
    """See ``mosa_kernels.torch_kernels.kl_rows``."""
    n, width = logits.shape
    if not (logits.is_contiguous() and ref_logits.is_contiguous()):
        raise ValueError("kl_rows needs contiguous logits and ref_logits")
    kl = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n == 0:
        return kl
    _kl_rows_kernel[(n,)](
        logits, ref_logits, kl if grad is None else grad.contiguous(), kl, width,
        WRITE_GRAD=grad is not None, BLOCK=vocab_block(width),
    )  # fmt: skip
    return kl

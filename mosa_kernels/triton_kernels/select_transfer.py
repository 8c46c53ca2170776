"""``select_transfer`` in Triton: one program ranks one row by pairwise comparison.

Semantics are those of ``mosa_kernels.torch_kernels.select_transfer``. A row is a decoding
block (tens to a few thousand positions), so counting, for each position, the masked
positions that beat it is cheap and needs no sort.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import interface

# select_transfer's rules (mosa_kernels.interface), as compile-time constants of the kernel.
_TOP_K = tl.constexpr(interface.TOP_K)
_THRESHOLD = tl.constexpr(interface.THRESHOLD)


@triton.jit
def _select_transfer_kernel(
    conf_ptr, masked_ptr, k_ptr, bound_ptr, out_ptr, width, threshold,
    RULE: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    row_start = row.to(tl.int64) * width
    for i_start in range(0, width, BLOCK_I):
        i = i_start + tl.arange(0, BLOCK_I)
        i_in = i < width
        conf_i = tl.load(conf_ptr + row_start + i, mask=i_in, other=0.0).to(tl.float32)
        masked_i = tl.load(masked_ptr + row_start + i, mask=i_in, other=0) != 0
        rank = tl.zeros([BLOCK_I], dtype=tl.int32)
        for j_start in range(0, width, BLOCK_J):
            j = j_start + tl.arange(0, BLOCK_J)
            j_in = j < width
            conf_j = tl.load(conf_ptr + row_start + j, mask=j_in, other=0.0).to(tl.float32)
            masked_j = tl.load(masked_ptr + row_start + j, mask=j_in, other=0) != 0
            ahead = (conf_j[None, :] > conf_i[:, None]) | (
                (conf_j[None, :] == conf_i[:, None]) & (j[None, :] < i[:, None])
            )
            rank += tl.sum((ahead & masked_j[None, :]).to(tl.int32), axis=1)
        if RULE == _TOP_K:
            take = rank < tl.load(k_ptr + row)
        elif RULE == _THRESHOLD:
            take = (conf_i >= threshold) | (rank == 0)
        else:  # interface.FACTOR
            take = (conf_i >= tl.load(bound_ptr + rank, mask=i_in, other=0.0)) | (rank == 0)
        tl.store(out_ptr + row_start + i, (take & masked_i).to(tl.int8), mask=i_in)


def select_transfer(
    confidence: torch.Tensor,
    is_masked: torch.Tensor,
    k: torch.Tensor | None,
    threshold: float | None,
    factor: float | None,
) -> torch.Tensor:
    """See ``mosa_kernels.torch_kernels.select_transfer``."""
    batch, width = confidence.shape
    out = torch.empty(batch, width, dtype=torch.bool, device=confidence.device)
    if batch == 0 or width == 0:
        return out
    if k is not None:
        rule = interface.TOP_K
    elif threshold is not None:
        rule = interface.THRESHOLD
    else:
        rule = interface.FACTOR
    # The factor bound of each rank, made in float64 and rounded once, as the spec does.
    bounds = confidence
    if factor is not None:
        ranks = torch.arange(width, device=confidence.device, dtype=torch.float64)
        bounds = (1.0 - factor / (ranks + 2)).float()
    block = max(16, min(64, triton.next_power_of_2(width)))
    _select_transfer_kernel[(batch,)](
        confidence, is_masked.view(torch.int8), confidence if k is None else k, bounds,
        out.view(torch.int8), width, 0.0 if threshold is None else threshold,
        RULE=rule, BLOCK_I=block, BLOCK_J=block,
    )  # fmt: skip
    return out

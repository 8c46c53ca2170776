"""``sample_update`` in Triton: one program streams one row of a vocabulary chunk.

Semantics and the state layout are those of ``mosa_kernels.torch_kernels.sample_update``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..random import hash32 as host_hash32
from ._launch import vocab_block
from .random import hash32, uniform


@triton.jit
def _sample_update_kernel(
    logits_ptr, uncond_ptr, state_ptr, best_index_ptr, suppress_ptr, exclude_ptr,
    n_cols, row_stride, col_offset, cfg_scale, temperature, seed_key, n_suppress, n_exclude,
    HAS_UNCOND: tl.constexpr, NOISY: tl.constexpr, TEMPERED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    state = state_ptr + row * 6
    top = tl.load(state + 0)
    total = tl.load(state + 1)
    entropy_acc = tl.load(state + 2)
    second = tl.load(state + 3)
    best = tl.load(state + 4)
    best_conf = tl.load(state + 5)
    best_index = tl.load(best_index_ptr + row)
    row_key = hash32(seed_key.to(tl.uint32) ^ row.to(tl.uint32))
    lanes = tl.arange(0, BLOCK)
    row_start = row.to(tl.int64) * row_stride
    for start in range(0, n_cols, BLOCK):
        offs = start + lanes
        in_row = offs < n_cols
        logit = tl.load(logits_ptr + row_start + offs, mask=in_row, other=0.0).to(tl.float32)
        if HAS_UNCOND:
            uncond = tl.load(uncond_ptr + row_start + offs, mask=in_row, other=0.0).to(tl.float32)
            logit = uncond + (cfg_scale + 1.0) * (logit - uncond)
        cols = offs + col_offset
        for i in range(n_suppress):
            logit = tl.where(cols == tl.load(suppress_ptr + i), float("-inf"), logit)
        logit = tl.where(in_row, logit, float("-inf"))
        if NOISY:
            noise = -tl.log(-tl.log(uniform(row_key, cols.to(tl.uint32))))
            score = logit / temperature + noise
        else:
            score = logit
        if TEMPERED:
            conf = logit / temperature
        else:
            conf = logit
        for i in range(n_exclude):
            conf = tl.where(cols == tl.load(exclude_ptr + i), float("-inf"), conf)

        tile_best = tl.max(score, axis=0)
        tile_arg = tl.argmax(score, axis=0, tie_break_left=True)
        conf_at_arg = tl.sum(tl.where(lanes == tile_arg, conf, 0.0), axis=0)
        better = tile_best > best
        best = tl.where(better, tile_best, best)
        best_conf = tl.where(better, conf_at_arg, best_conf)
        best_index = tl.where(better, (start + tile_arg + col_offset).to(tl.int64), best_index)

        tile_top = tl.max(conf, axis=0)
        top_arg = tl.argmax(conf, axis=0, tie_break_left=True)
        tile_second = tl.max(tl.where(lanes == top_arg, float("-inf"), conf), axis=0)
        new_top = tl.maximum(top, tile_top)
        safe_top = tl.where(new_top > float("-inf"), new_top, 0.0)
        shifted = conf - safe_top
        p = tl.exp(shifted)
        tile_total = tl.sum(p, axis=0)
        tile_entropy = tl.sum(tl.where(p > 0, p * shifted, 0.0), axis=0)
        had_mass = total > 0
        drop = tl.where(had_mass, top - safe_top, 0.0)
        scale = tl.exp(drop)
        entropy_acc = tl.where(had_mass, (entropy_acc + total * drop) * scale, entropy_acc)
        entropy_acc += tile_entropy
        total = total * scale + tile_total
        second = tl.maximum(tl.maximum(second, tile_second), tl.minimum(top, tile_top))
        top = new_top
    tl.store(state + 0, top)
    tl.store(state + 1, total)
    tl.store(state + 2, entropy_acc)
    tl.store(state + 3, second)
    tl.store(state + 4, best)
    tl.store(state + 5, best_conf)
    tl.store(best_index_ptr + row, best_index)


def sample_update(
    logits: torch.Tensor,
    logits_uncond: torch.Tensor | None,
    cfg_scale: float,
    col_offset: int,
    state: torch.Tensor,
    best_index: torch.Tensor,
    temperature: float,
    tempered_confidence: bool,
    seed: int,
    suppress: torch.Tensor,
    exclude: torch.Tensor,
) -> None:
    """See ``mosa_kernels.torch_kernels.sample_update``."""
    n, width = logits.shape
    if logits.stride(1) != 1 or (
        logits_uncond is not None and logits_uncond.stride() != logits.stride()
    ):
        raise ValueError(
            "sample_update needs row-major logits (and uncond logits with the same strides)"
        )
    seed_key = int(host_hash32(torch.tensor(seed & 0xFFFFFFFF)))
    _sample_update_kernel[(n,)](
        logits, logits if logits_uncond is None else logits_uncond, state, best_index,
        suppress, exclude, width, logits.stride(0), col_offset, float(cfg_scale),
        float(temperature) if temperature > 0 else 1.0, seed_key,
        suppress.numel(), exclude.numel(),
        HAS_UNCOND=logits_uncond is not None, NOISY=temperature > 0,
        TEMPERED=bool(tempered_confidence and temperature > 0), BLOCK=vocab_block(width),
    )  # fmt: skip

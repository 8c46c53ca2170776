"""``sample_update`` in Triton: one program streams one row of a vocabulary chunk.

Semantics are those of ``mosa_kernels.torch_kernels.sample_update``; the state's columns are
``mosa_kernels.interface``'s, as ``tl.constexpr`` constants.
Each lane keeps its own best score, top two confidence logits and exp-sums; a step reads
UNROLL tiles of BLOCK columns in one load, each thread holding every tile's columns of its
lanes, so folding them in is thread-local. The one cross-lane reduction per step is the max that
the exp-sums are kept relative to; the lanes are combined once, at the end. Reducing every
statistic per tile instead (arg-maxes included) bound the loop by reductions, not by reading
the logits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import interface
from ..random import hash32 as host_hash32
from ._launch import interpreting, vocab_block
from .random import hash32, uniform

# The state's columns (mosa_kernels.interface), as compile-time constants of the kernel.
_M = tl.constexpr(interface.M)
_S = tl.constexpr(interface.S)
_E = tl.constexpr(interface.E)
_TOP2 = tl.constexpr(interface.TOP2)
_BEST = tl.constexpr(interface.BEST)
_BEST_C = tl.constexpr(interface.BEST_C)
_STATE_WIDTH = tl.constexpr(interface.STATE_WIDTH)

# Warps a launch should have in flight: a row's program gets 2048 / rows of them (rounded up to a
# power of two, 1 to 8), and 256 columns per warp and tile. On an H100 at V = 126464 (bf16), 2048
# rows took 309 us with 1 warp a row against 454 us with 8, and 128 rows 39 us with 8 warps
# against 129 us with 1.
_LAUNCH_WARPS = 2048
_UNROLL = 4


def _tile(n_rows: int, width: int) -> dict:
    if interpreting():
        return {"BLOCK": vocab_block(width) // 2, "UNROLL": 2}
    warps = triton.next_power_of_2(max(1, min(8, _LAUNCH_WARPS // max(n_rows, 1))))
    # Narrow rows take smaller tiles rather than steps that are mostly past the row's end.
    return {"BLOCK": min(256 * warps, vocab_block(width)), "UNROLL": _UNROLL, "num_warps": warps}


@triton.jit
def _scores(
    logits_row, uncond_row, suppress_ptr, exclude_ptr, offs, n_cols, col_offset, cfg_scale,
    temperature, row_key, n_suppress, n_exclude, HAS_UNCOND: tl.constexpr,
    NOISY: tl.constexpr, TEMPERED: tl.constexpr, HAS_EXCLUDE: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    """The sampling scores and confidence logits of the columns ``offs`` of one row; only the
    last, partial step (MASKED) checks the columns against the row's end."""
    if MASKED:
        in_row = offs < n_cols
        logit = tl.load(logits_row + offs, mask=in_row, other=0.0).to(tl.float32)
    else:
        logit = tl.load(logits_row + offs).to(tl.float32)
    if HAS_UNCOND:
        if MASKED:
            uncond = tl.load(uncond_row + offs, mask=in_row, other=0.0).to(tl.float32)
        else:
            uncond = tl.load(uncond_row + offs).to(tl.float32)
        logit = uncond + (cfg_scale + 1.0) * (logit - uncond)
    cols = offs + col_offset
    for i in range(n_suppress):
        logit = tl.where(cols == tl.load(suppress_ptr + i), float("-inf"), logit)
    if MASKED:
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
    if HAS_EXCLUDE:
        for i in range(n_exclude):
            conf = tl.where(cols == tl.load(exclude_ptr + i), float("-inf"), conf)
    return score, conf


@triton.jit
def _fold_step(
    best, best_conf, best_col, top, second, total, entropy, ref, score, conf, start, lanes,
    BLOCK: tl.constexpr, UNROLL: tl.constexpr, SCORE_IS_CONF: tl.constexpr,
):  # fmt: skip
    """Folds a step's ``[UNROLL, BLOCK]`` scores and confidence logits into the lanes'
    statistics; the sums are kept relative to ``ref``, the running max (0 while it is -inf)."""
    tile = tl.arange(0, UNROLL)[:, None]
    step_top = tl.max(conf, axis=0)
    top_arg = tl.argmax(conf, axis=0, tie_break_left=True)
    # A lane's best of the step is its first column among equal scores; across steps only a
    # strictly greater score replaces it, so a lane keeps its earliest column on ties.
    if SCORE_IS_CONF:
        step_best = step_top
        step_arg = top_arg
        step_best_conf = step_top
    else:
        step_best = tl.max(score, axis=0)
        step_arg = tl.argmax(score, axis=0, tie_break_left=True)
        step_best_conf = tl.sum(tl.where(tile == step_arg[None, :], conf, 0.0), axis=0)
    better = step_best > best
    best = tl.where(better, step_best, best)
    best_conf = tl.where(better, step_best_conf, best_conf)
    best_col = tl.where(better, start + step_arg * BLOCK + lanes, best_col)

    step_second = tl.max(tl.where(tile == top_arg[None, :], float("-inf"), conf), axis=0)
    second = tl.maximum(tl.maximum(second, step_second), tl.minimum(top, step_top))
    top = tl.maximum(top, step_top)

    new_ref = tl.maximum(ref, tl.max(step_top, axis=0))
    safe_ref = tl.where(new_ref > float("-inf"), new_ref, 0.0)
    # While ref is -inf every lane sum is 0; rescaling them could only make a NaN.
    drop = tl.where(ref > float("-inf"), ref - safe_ref, 0.0)
    scale = tl.exp(drop)
    shifted = conf - safe_ref
    p = tl.exp(shifted)
    entropy = (entropy + total * drop) * scale + tl.sum(tl.where(p > 0, p * shifted, 0.0), axis=0)
    total = total * scale + tl.sum(p, axis=0)
    return best, best_conf, best_col, top, second, total, entropy, new_ref


@triton.jit
def _sample_update_kernel(
    logits_ptr, uncond_ptr, state_ptr, best_index_ptr, suppress_ptr, exclude_ptr,
    n_cols, row_stride, col_offset, cfg_scale, temperature, seed_key, n_suppress, n_exclude,
    HAS_UNCOND: tl.constexpr, NOISY: tl.constexpr, TEMPERED: tl.constexpr,
    HAS_EXCLUDE: tl.constexpr, BLOCK: tl.constexpr, UNROLL: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    state = state_ptr + row * _STATE_WIDTH
    top = tl.load(state + _M)
    total = tl.load(state + _S)
    entropy_acc = tl.load(state + _E)
    row_key = hash32(seed_key.to(tl.uint32) ^ row.to(tl.uint32))
    row_start = row.to(tl.int64) * row_stride
    logits_row = logits_ptr + row_start
    uncond_row = uncond_ptr + row_start
    lanes = tl.arange(0, BLOCK)
    tile_cols = tl.arange(0, UNROLL)[:, None] * BLOCK + lanes[None, :]
    # Without sampling noise or excluded ids the score is the confidence logit: one arg-max.
    SCORE_IS_CONF: tl.constexpr = not NOISY and not HAS_EXCLUDE
    best = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    best_conf = tl.zeros([BLOCK], dtype=tl.float32)
    best_col = tl.zeros([BLOCK], dtype=tl.int32)
    lane_top = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    second = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    lane_total = tl.zeros([BLOCK], dtype=tl.float32)
    lane_entropy = tl.zeros([BLOCK], dtype=tl.float32)
    ref = top

    full_end = n_cols - n_cols % (UNROLL * BLOCK)
    # The full steps load without masks; the partial last step, if any, is peeled off.
    for start in range(0, full_end, UNROLL * BLOCK):
        score, conf = _scores(
            logits_row, uncond_row, suppress_ptr, exclude_ptr, start + tile_cols, n_cols,
            col_offset, cfg_scale, temperature, row_key, n_suppress, n_exclude,
            HAS_UNCOND, NOISY, TEMPERED, HAS_EXCLUDE, False,
        )  # fmt: skip
        best, best_conf, best_col, lane_top, second, lane_total, lane_entropy, ref = _fold_step(
            best, best_conf, best_col, lane_top, second, lane_total, lane_entropy, ref,
            score, conf, start, lanes, BLOCK, UNROLL, SCORE_IS_CONF,
        )  # fmt: skip
    if full_end < n_cols:
        score, conf = _scores(
            logits_row, uncond_row, suppress_ptr, exclude_ptr, full_end + tile_cols, n_cols,
            col_offset, cfg_scale, temperature, row_key, n_suppress, n_exclude,
            HAS_UNCOND, NOISY, TEMPERED, HAS_EXCLUDE, True,
        )  # fmt: skip
        best, best_conf, best_col, lane_top, second, lane_total, lane_entropy, ref = _fold_step(
            best, best_conf, best_col, lane_top, second, lane_total, lane_entropy, ref,
            score, conf, full_end, lanes, BLOCK, UNROLL, SCORE_IS_CONF,
        )  # fmt: skip

    # The chunk's best: the highest score, the lowest column among equals.
    chunk_best = tl.max(best, axis=0)
    is_best = best == chunk_best
    chunk_col = tl.min(tl.where(is_best, best_col, n_cols), axis=0)
    chunk_best_conf = tl.sum(tl.where(is_best & (best_col == chunk_col), best_conf, 0.0), axis=0)
    if chunk_best > tl.load(state + _BEST):
        tl.store(state + _BEST, chunk_best)
        tl.store(state + _BEST_C, chunk_best_conf)
        tl.store(best_index_ptr + row, (chunk_col + col_offset).to(tl.int64))

    chunk_top = tl.max(lane_top, axis=0)
    top_lane = tl.argmax(lane_top, axis=0, tie_break_left=True)
    chunk_second = tl.maximum(
        tl.max(second, axis=0),
        tl.max(tl.where(lanes == top_lane, float("-inf"), lane_top), axis=0),
    )
    chunk_second = tl.maximum(
        tl.maximum(tl.load(state + _TOP2), chunk_second), tl.minimum(top, chunk_top)
    )

    # The state's sums, relative to its old max, moved to the new reference and added in.
    safe_ref = tl.where(ref > float("-inf"), ref, 0.0)
    drop = tl.where(top > float("-inf"), top - safe_ref, 0.0)
    scale = tl.exp(drop)
    tl.store(state + _M, ref)
    tl.store(state + _S, total * scale + tl.sum(lane_total, axis=0))
    tl.store(state + _E, (entropy_acc + total * drop) * scale + tl.sum(lane_entropy, axis=0))
    tl.store(state + _TOP2, chunk_second)


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
    # On a Python int: no tensor read back on the host (a CUDA graph may be capturing).
    seed_key = host_hash32(seed & 0xFFFFFFFF)
    _sample_update_kernel[(n,)](
        logits, logits if logits_uncond is None else logits_uncond, state, best_index,
        suppress, exclude, width, logits.stride(0), col_offset, float(cfg_scale),
        float(temperature) if temperature > 0 else 1.0, seed_key,
        suppress.numel(), exclude.numel(),
        HAS_UNCOND=logits_uncond is not None, NOISY=temperature > 0,
        TEMPERED=bool(tempered_confidence and temperature > 0), HAS_EXCLUDE=exclude.numel() > 0,
        **_tile(n, width),
    )  # fmt: skip

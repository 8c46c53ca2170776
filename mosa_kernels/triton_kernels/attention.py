"""Bidirectional or block-causal masked attention in Triton: FlashAttention-2 forward and backward
(docs/DESIGN.md §4.1).

Layout is the one projections produce: q ``[B, Lq, Hq, D]``, k/v ``[B, Lk, Hkv, D]``, read
through their strides. The forward keeps a running max and sum per query row over key tiles
(online softmax) and saves the row's log-sum-exp (base 2) for the backward, which recomputes
the probabilities tile by tile instead of storing them.

Key masking: a short kernel finds, per batch item, the keys from its first valid key to its
last one and whether an invalid key lies between them (a hole). The forward and dQ loops walk
that range in contiguous tiles that start at its first key, so keys outside it (left or right
padding) are never loaded or multiplied, and a tile's addresses follow from the loop counter
alone, which lets Triton prefetch the next tiles while it multiplies this one. A range without
holes masks only past its end; a range with holes runs a second copy of the loop that also
loads the mask and masks key by key (a tile of invalid keys inside the range costs a step but
changes nothing). The dK/dV kernel, which owns one key tile per program, runs no step when its
tile has no valid key and stores zeros. Masked keys are never read, so they may hold anything
(even NaN).

Block-causal mode (``CAUSAL``, LLaDA2's block diffusion): the queries are the sequence's last
Lq positions (query row i sits at key position ``query_offset + i``, ``query_offset = Lk - Lq``)
and position p sees key j only if ``j // block_length <= p // block_length``, so row p sees the
keys before ``_block_end(p)``. A query tile's key loop stops at its last row's block end: later
key tiles are never loaded, and the boundary tile loads no key past it. Key tiles that every row
of the tile sees run the plain loop; only the ones past the tile's first row's block end mask
key by key. The dK/dV kernel likewise starts its query loop at the first query tile whose last
block reaches its key tile and masks key by key only until every row sees the whole tile.

A query row with no key to attend (a batch item with no valid key, or a row whose blocks hold
only padding) outputs zeros and gets zero gradients: no allowed score reaches its softmax, its
sum stays zero, and its log-sum-exp is stored as +inf so that the backward's probabilities for
it are exp2(-inf) = 0.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

_INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"

# Keys examined per step when finding a batch item's key range.
_RANGE_BLOCK = 1024
_DELTA_BLOCK_M = 32 if _INTERPRETING else 64

_TORCH_TO_TRITON = {
    torch.float32: tl.float32,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}


class _Launcher:
    """Launches a kernel with tiles that ``triton.autotune`` picks for 16-bit inputs on a GPU, or
    with a fixed config: fp32 tiles take twice the shared memory (most tuned configs would not
    fit), and the interpreter cannot time configs."""

    def __init__(self, kernel, tuned_configs, fp32_config, interpreter_config):
        self.kernel = kernel
        self.tuned = None
        if not _INTERPRETING:
            # A masked or block-causal launch compiles more copies of the key loop, so it may
            # want other tiles.
            self.tuned = triton.autotune(
                configs=tuned_configs, key=["HEAD_DIM", "HAS_MASK", "CAUSAL"]
            )(kernel)
        self.fp32_config = fp32_config
        self.interpreter_config = interpreter_config

    def __call__(self, grid, dtype: torch.dtype, *args, **kwargs) -> None:
        if _INTERPRETING:
            config = self.interpreter_config
        elif dtype == torch.float32:
            config = self.fp32_config
        else:
            self.tuned[grid](*args, **kwargs)
            return
        self.kernel[grid](*args, **kwargs, **config.all_kwargs())


@triton.jit
def _key_range_kernel(
    valid_ptr,
    stride_valid_b,
    stride_valid_n,
    seqlen_k,
    key_range_ptr,
    BLOCK: tl.constexpr,
):
    """Writes ``key_range[b] = (first, end, holes)`` for batch item ``b = program_id(0)``: keys
    ``first .. end - 1`` hold all its valid keys, from the first to the last, and ``holes`` is 1
    where an invalid key lies between them. An item without a valid key gets ``(0, 0, 0)``."""
    batch = tl.program_id(0)
    valid_row = valid_ptr + batch.to(tl.int64) * stride_valid_b
    offs = tl.arange(0, BLOCK)
    first = seqlen_k
    end = 0
    count = 0
    for start in range(0, seqlen_k, BLOCK):
        keys = start + offs
        valid = tl.load(valid_row + keys * stride_valid_n, mask=keys < seqlen_k, other=0) != 0
        first = tl.minimum(first, tl.min(tl.where(valid, keys, seqlen_k), axis=0))
        end = tl.maximum(end, tl.max(tl.where(valid, keys + 1, 0), axis=0))
        count += tl.sum(valid.to(tl.int32), axis=0)
    # Without a valid key first = seqlen_k > end = 0; the range must be empty, not reversed.
    first = tl.minimum(first, end)
    entry = key_range_ptr + 3 * batch
    tl.store(entry, first)
    tl.store(entry + 1, end)
    tl.store(entry + 2, (end - first != count).to(tl.int32))


@triton.jit
def _key_range(key_range_ptr, batch, seqlen_k, HAS_MASK: tl.constexpr):
    """``(first, end, holes)`` of the batch item (see ``_key_range_kernel``); every key, without
    holes, when there is no mask."""
    if HAS_MASK:
        entry = key_range_ptr + 3 * batch
        first = tl.load(entry)
        end = tl.load(entry + 1)
        holes = tl.load(entry + 2)
    else:
        first = 0
        end = seqlen_k
        holes = 0
    return first, end, holes


@triton.jit
def _tile_ptrs(base, batch, head, rows, offs_d, stride_b, stride_l, stride_h, stride_d):
    """Pointers to rows ``rows`` (all of D) of one (batch, head) of a ``[B, L, H, D]`` tensor."""
    return (
        base
        + batch.to(tl.int64) * stride_b
        + head * stride_h
        + rows[:, None] * stride_l
        + offs_d[None, :] * stride_d
    )


@triton.jit
def _key_tile(keys, offs_n, offs_d, start, end, HOLES: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """K, V and the attendable keys of the keys ``start + offs_n`` of one (batch, kv head), where
    ``keys`` holds the head's row bases of K, V and the mask and their strides (see the callers).
    Attendable: before ``end`` and, where ``HOLES``, valid in the mask; the others load as zeros
    and are never read."""
    k_rows, v_rows, valid_row, stride_kn, stride_kd, stride_vn, stride_vd, stride_valid_n = keys
    offs_key = start + offs_n
    key_ok = offs_key < end
    if HOLES:
        valid = tl.load(valid_row + offs_key * stride_valid_n, mask=key_ok, other=0)
        key_ok = key_ok & (valid != 0)
    k = tl.load(
        k_rows + offs_key[:, None] * stride_kn + offs_d[None, :] * stride_kd,
        mask=key_ok[:, None],
        other=0.0,
    ).to(DOT_DTYPE)
    v = tl.load(
        v_rows + offs_key[:, None] * stride_vn + offs_d[None, :] * stride_vd,
        mask=key_ok[:, None],
        other=0.0,
    ).to(DOT_DTYPE)
    return k, v, key_ok


@triton.jit
def _block_end(position, block_length):
    """One past the last key that query ``position`` sees under block-causal attention: the end
    of its block."""
    return (position // block_length + 1) * block_length


@triton.jit
def _query_key_bounds(
    first, end, pid_m, offs_m, seqlen_q, query_offset, block_length,
    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """``(split, stop, row_end)`` for the query tile ``pid_m`` over the key range ``first ..
    end``: its key loop runs over ``first .. stop`` in tiles from ``first``, tiles before
    ``split`` being seen whole by every row and those from ``split`` on needing the per-row
    bound ``row_end`` (one past each row's last visible key). Non-causal: every key to ``end``
    is seen by every row."""
    if CAUSAL:
        last_row = tl.minimum((pid_m + 1) * BLOCK_M, seqlen_q) - 1
        stop = tl.minimum(end, _block_end(query_offset + last_row, block_length))
        # Keys before the first row's block end are seen by every row of the tile.
        seen_by_all = tl.minimum(stop, _block_end(query_offset + pid_m * BLOCK_M, block_length))
        split = first + tl.maximum(seen_by_all - first, 0) // BLOCK_N * BLOCK_N
        row_end = _block_end(query_offset + offs_m, block_length)
    else:
        stop = end
        split = end
        row_end = offs_m  # unused
    return split, stop, row_end


@triton.jit
def _forward_steps(
    q, acc, row_max, row_sum, keys, offs_n, offs_d, lo, hi, end, row_end, qk_scale_log2,
    HOLES: tl.constexpr, PER_ROW: tl.constexpr, DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """The forward's online softmax over the key tiles starting at ``lo, lo + BLOCK_N, ..``
    below ``hi``, keys before ``end`` (and, where ``PER_ROW``, before the row's ``row_end``)."""
    for start in range(lo, hi, BLOCK_N):
        k, v, key_ok = _key_tile(keys, offs_n, offs_d, start, end, HOLES, DOT_DTYPE)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2
        if PER_ROW:
            allowed = key_ok[None, :] & ((start + offs_n)[None, :] < row_end[:, None])
            scores = tl.where(allowed, scores, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(scores, axis=1))
            # A row that has seen no allowed key yet keeps a max of -inf; exp2 against 0 keeps
            # its terms zero instead of exp2(-inf - -inf) = NaN.
            base = tl.where(new_max == float("-inf"), 0.0, new_max)
        else:
            scores = tl.where(key_ok[None, :], scores, float("-inf"))
            # These tiles start at the range's first key, which every row sees, so new_max is
            # finite from the first tile on, and a tile of invalid keys adds exp2(-inf) = 0.
            new_max = tl.maximum(row_max, tl.max(scores, axis=1))
            base = new_max
        rescale = tl.exp2(row_max - base)
        p = tl.exp2(scores - base[:, None])
        row_sum = row_sum * rescale + tl.sum(p, axis=1)
        acc = acc * rescale[:, None]
        acc = tl.dot(p.to(DOT_DTYPE), v, acc, input_precision=DOT_PRECISION)
        row_max = new_max
    return acc, row_max, row_sum


@triton.jit
def _forward_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    lse_ptr,
    valid_ptr,
    key_range_ptr,
    stride_qb,
    stride_qm,
    stride_qh,
    stride_qd,
    stride_kb,
    stride_kn,
    stride_kh,
    stride_kd,
    stride_vb,
    stride_vn,
    stride_vh,
    stride_vd,
    stride_ob,
    stride_om,
    stride_oh,
    stride_od,
    stride_valid_b,
    stride_valid_n,
    q_heads,
    seqlen_q,
    seqlen_k,
    qk_scale_log2,
    block_length,
    query_offset,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HAS_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program: BLOCK_M query rows of one (batch, q head); loops over the key range (up to
    the tile's last visible key where ``CAUSAL``)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // q_heads
    head = pid_bh % q_heads
    kv_head = head // GROUP

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seqlen_q

    q = tl.load(
        _tile_ptrs(q_ptr, batch, head, offs_m, offs_d, stride_qb, stride_qm, stride_qh, stride_qd),
        mask=row_ok[:, None],
        other=0.0,
    ).to(DOT_DTYPE)
    k_rows = k_ptr + batch.to(tl.int64) * stride_kb + kv_head * stride_kh
    v_rows = v_ptr + batch.to(tl.int64) * stride_vb + kv_head * stride_vh
    valid_row = valid_ptr + batch.to(tl.int64) * stride_valid_b
    keys = (k_rows, v_rows, valid_row, stride_kn, stride_kd, stride_vn, stride_vd, stride_valid_n)
    first, end, holes = _key_range(key_range_ptr, batch, seqlen_k, HAS_MASK)
    split, stop, row_end = _query_key_bounds(
        first, end, pid_m, offs_m, seqlen_q, query_offset, block_length, CAUSAL, BLOCK_M, BLOCK_N
    )

    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # One copy of the loop per value of HOLES, picked per batch item: the copy for a range
    # without holes loads no mask, so nothing it loads waits on another load and Triton can
    # fetch tiles ahead. Block-causal launches add a copy for the tiles masked row by row.
    for variant in tl.static_range(1 + HAS_MASK):
        if holes == variant:
            acc, row_max, row_sum = _forward_steps(
                q, acc, row_max, row_sum, keys, offs_n, offs_d, first, split, stop, row_end,
                qk_scale_log2, variant, False, DOT_DTYPE, DOT_PRECISION, BLOCK_N,
            )  # fmt: skip
            if CAUSAL:
                acc, row_max, row_sum = _forward_steps(
                    q, acc, row_max, row_sum, keys, offs_n, offs_d, split, stop, stop, row_end,
                    qk_scale_log2, variant, True, DOT_DTYPE, DOT_PRECISION, BLOCK_N,
                )  # fmt: skip

    has_key = row_sum > 0.0
    # Rows with no key to attend have acc == 0 and row_sum == 0: dividing by 1 leaves zeros.
    row_sum = tl.where(has_key, row_sum, 1.0)
    out = acc / row_sum[:, None]
    tl.store(
        _tile_ptrs(o_ptr, batch, head, offs_m, offs_d, stride_ob, stride_om, stride_oh, stride_od),
        out.to(o_ptr.dtype.element_ty),
        mask=row_ok[:, None],
    )
    # +inf for a row with no key to attend makes any exp2(score - lse) zero, never NaN.
    lse = tl.where(has_key, row_max + tl.log2(row_sum), float("inf"))
    tl.store(lse_ptr + pid_bh.to(tl.int64) * seqlen_q + offs_m, lse, mask=row_ok)


@triton.jit
def _delta_kernel(
    o_ptr,
    do_ptr,
    delta_ptr,
    stride_ob,
    stride_om,
    stride_oh,
    stride_od,
    stride_dob,
    stride_dom,
    stride_doh,
    stride_dod,
    q_heads,
    seqlen_q,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """``delta = rowsum(dO * O)``, the softmax-backward term shared by dQ and dK."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // q_heads
    head = pid_bh % q_heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seqlen_q
    o = tl.load(
        _tile_ptrs(o_ptr, batch, head, offs_m, offs_d, stride_ob, stride_om, stride_oh, stride_od),
        mask=row_ok[:, None],
        other=0.0,
    ).to(tl.float32)
    do = tl.load(
        _tile_ptrs(
            do_ptr, batch, head, offs_m, offs_d, stride_dob, stride_dom, stride_doh, stride_dod
        ),
        mask=row_ok[:, None],
        other=0.0,
    ).to(tl.float32)
    tl.store(
        delta_ptr + pid_bh.to(tl.int64) * seqlen_q + offs_m, tl.sum(o * do, axis=1), mask=row_ok
    )


@triton.jit
def _query_tile(queries, batch, head, rows, offs_d, q_heads, seqlen_q, DOT_DTYPE: tl.constexpr):
    """q, dO, log-sum-exp and delta of the query rows ``rows`` of one (batch, q head), where
    ``queries`` holds the pointers to q, dO, lse and delta and the strides of q and dO (see the
    callers). Rows past ``seqlen_q`` load as zeros."""
    (q_ptr, do_ptr, lse_ptr, delta_ptr, stride_qb, stride_qm, stride_qh, stride_qd,
     stride_dob, stride_dom, stride_doh, stride_dod) = queries  # fmt: skip
    row_ok = rows < seqlen_q
    q = tl.load(
        _tile_ptrs(q_ptr, batch, head, rows, offs_d, stride_qb, stride_qm, stride_qh, stride_qd),
        mask=row_ok[:, None],
        other=0.0,
    ).to(DOT_DTYPE)
    do = tl.load(
        _tile_ptrs(
            do_ptr, batch, head, rows, offs_d, stride_dob, stride_dom, stride_doh, stride_dod
        ),
        mask=row_ok[:, None],
        other=0.0,
    ).to(DOT_DTYPE)
    stats_offset = (batch * q_heads + head).to(tl.int64) * seqlen_q + rows
    lse = tl.load(lse_ptr + stats_offset, mask=row_ok, other=0.0)
    delta = tl.load(delta_ptr + stats_offset, mask=row_ok, other=0.0)
    return q, do, lse, delta


@triton.jit
def _dkdv_steps(
    k, v, key_ok, dk, dv, offs_key, queries, batch, kv_head, offs_m, offs_d, has_key, tile_lo,
    tile_hi, q_heads, seqlen_q, qk_scale_log2, block_length, query_offset,
    PER_ROW: tl.constexpr, GROUP: tl.constexpr, DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """dK and dV (unscaled) of one key tile summed over the query tiles ``tile_lo ..
    tile_hi - 1`` of every q head of the kv head's group; ``PER_ROW``: masked to the keys each
    row sees (block-causal). No step runs unless ``has_key``."""
    q_tiles = tile_hi - tile_lo
    num_steps = tl.where(has_key, GROUP * q_tiles, 0)
    # One flat loop over (q head of the group, query tile) so the compiler pipelines its loads.
    for step in range(0, num_steps):
        head = kv_head * GROUP + step // q_tiles
        rows = (tile_lo + step % q_tiles) * BLOCK_M + offs_m
        q, do, lse, delta = _query_tile(
            queries, batch, head, rows, offs_d, q_heads, seqlen_q, DOT_DTYPE
        )

        # Transposed scores [keys, rows], so dK and dV come out of dots without transposes.
        scores_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale_log2
        p_t = tl.exp2(scores_t - lse[None, :])
        # Rows past seqlen_q load as zeros (q, dO, delta), so they add nothing to dK or dV.
        allowed = key_ok[:, None]
        if PER_ROW:
            row_end = _block_end(query_offset + rows, block_length)
            allowed = allowed & (offs_key[:, None] < row_end[None, :])
        p_t = tl.where(allowed, p_t, 0.0)
        dv = tl.dot(p_t.to(DOT_DTYPE), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(DOT_DTYPE), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _dkdv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    dk_ptr,
    dv_ptr,
    lse_ptr,
    delta_ptr,
    valid_ptr,
    stride_qb,
    stride_qm,
    stride_qh,
    stride_qd,
    stride_kb,
    stride_kn,
    stride_kh,
    stride_kd,
    stride_vb,
    stride_vn,
    stride_vh,
    stride_vd,
    stride_dob,
    stride_dom,
    stride_doh,
    stride_dod,
    stride_dkb,
    stride_dkn,
    stride_dkh,
    stride_dkd,
    stride_dvb,
    stride_dvn,
    stride_dvh,
    stride_dvd,
    stride_valid_b,
    stride_valid_n,
    q_heads,
    kv_heads,
    seqlen_q,
    seqlen_k,
    softmax_scale,
    qk_scale_log2,
    block_length,
    query_offset,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HAS_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program: dK and dV of BLOCK_N keys of one (batch, kv head), summed over every query
    tile (that sees them, where ``CAUSAL``) of every q head in the kv head's group (so GQA needs
    no atomics)."""
    pid_n = tl.program_id(0)
    pid_bkv = tl.program_id(1)
    batch = pid_bkv // kv_heads
    kv_head = pid_bkv % kv_heads

    offs_n = tl.arange(0, BLOCK_N)
    offs_key = pid_n * BLOCK_N + offs_n
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    k_rows = k_ptr + batch.to(tl.int64) * stride_kb + kv_head * stride_kh
    v_rows = v_ptr + batch.to(tl.int64) * stride_vb + kv_head * stride_vh
    valid_row = valid_ptr + batch.to(tl.int64) * stride_valid_b
    keys = (k_rows, v_rows, valid_row, stride_kn, stride_kd, stride_vn, stride_vd, stride_valid_n)
    k, v, key_ok = _key_tile(keys, offs_n, offs_d, pid_n * BLOCK_N, seqlen_k, HAS_MASK, DOT_DTYPE)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    q_tiles = tl.cdiv(seqlen_q, BLOCK_M)
    # A tile with no valid key (padding) gets zero gradients: its K/V loads are masked off, it
    # runs no step, and it only stores the zeros (cheaper than zero-filling all of dK and dV).
    has_key = tl.max(key_ok.to(tl.int32), axis=0) > 0
    queries = (q_ptr, do_ptr, lse_ptr, delta_ptr, stride_qb, stride_qm, stride_qh, stride_qd,
               stride_dob, stride_dom, stride_doh, stride_dod)  # fmt: skip
    if CAUSAL:
        # Query tiles before the one holding the first row whose block reaches this key tile
        # see none of it and are skipped; those before the first row that sees all of it
        # mask row by row.
        key_end = tl.minimum((pid_n + 1) * BLOCK_N, seqlen_k)
        first_row = (pid_n * BLOCK_N) // block_length * block_length - query_offset
        full_row = (key_end - 1) // block_length * block_length - query_offset
        tile_seen = tl.maximum(first_row, 0) // BLOCK_M
        tile_whole = tl.cdiv(tl.maximum(full_row, 0), BLOCK_M)
        dk, dv = _dkdv_steps(
            k, v, key_ok, dk, dv, offs_key, queries, batch, kv_head, offs_m, offs_d, has_key,
            tile_seen, tile_whole, q_heads, seqlen_q, qk_scale_log2, block_length,
            query_offset, True, GROUP, DOT_DTYPE, DOT_PRECISION, BLOCK_M,
        )  # fmt: skip
    else:
        tile_whole = 0
    dk, dv = _dkdv_steps(
        k, v, key_ok, dk, dv, offs_key, queries, batch, kv_head, offs_m, offs_d, has_key,
        tile_whole, q_tiles, q_heads, seqlen_q, qk_scale_log2, block_length, query_offset,
        False, GROUP, DOT_DTYPE, DOT_PRECISION, BLOCK_M,
    )  # fmt: skip

    dk = dk * softmax_scale
    key_in_range = offs_key < seqlen_k
    tl.store(
        _tile_ptrs(
            dk_ptr, batch, kv_head, offs_key, offs_d, stride_dkb, stride_dkn, stride_dkh, stride_dkd
        ),
        dk.to(dk_ptr.dtype.element_ty),
        mask=key_in_range[:, None],
    )
    tl.store(
        _tile_ptrs(
            dv_ptr, batch, kv_head, offs_key, offs_d, stride_dvb, stride_dvn, stride_dvh, stride_dvd
        ),
        dv.to(dv_ptr.dtype.element_ty),
        mask=key_in_range[:, None],
    )


@triton.jit
def _dq_steps(
    q, do, lse, delta, dq, keys, offs_n, offs_d, lo, hi, end, row_end, qk_scale_log2,
    HOLES: tl.constexpr, PER_ROW: tl.constexpr, DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """dQ (unscaled) summed over the key tiles starting at ``lo, lo + BLOCK_N, ..`` below
    ``hi``, keys before ``end`` (and, where ``PER_ROW``, before the row's ``row_end``)."""
    for start in range(lo, hi, BLOCK_N):
        k, v, key_ok = _key_tile(keys, offs_n, offs_d, start, end, HOLES, DOT_DTYPE)
        allowed = key_ok[None, :]
        if PER_ROW:
            allowed = allowed & ((start + offs_n)[None, :] < row_end[:, None])
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2
        p = tl.where(allowed, tl.exp2(scores - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(DOT_DTYPE), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    dq_ptr,
    lse_ptr,
    delta_ptr,
    valid_ptr,
    key_range_ptr,
    stride_qb,
    stride_qm,
    stride_qh,
    stride_qd,
    stride_kb,
    stride_kn,
    stride_kh,
    stride_kd,
    stride_vb,
    stride_vn,
    stride_vh,
    stride_vd,
    stride_dob,
    stride_dom,
    stride_doh,
    stride_dod,
    stride_dqb,
    stride_dqm,
    stride_dqh,
    stride_dqd,
    stride_valid_b,
    stride_valid_n,
    q_heads,
    seqlen_q,
    seqlen_k,
    softmax_scale,
    qk_scale_log2,
    block_length,
    query_offset,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HAS_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program: dQ of BLOCK_M query rows of one (batch, q head) over the key range (up to
    the tile's last visible key where ``CAUSAL``), as the forward walks it."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // q_heads
    head = pid_bh % q_heads
    kv_head = head // GROUP

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seqlen_q

    queries = (q_ptr, do_ptr, lse_ptr, delta_ptr, stride_qb, stride_qm, stride_qh, stride_qd,
               stride_dob, stride_dom, stride_doh, stride_dod)  # fmt: skip
    q, do, lse, delta = _query_tile(
        queries, batch, head, offs_m, offs_d, q_heads, seqlen_q, DOT_DTYPE
    )
    k_rows = k_ptr + batch.to(tl.int64) * stride_kb + kv_head * stride_kh
    v_rows = v_ptr + batch.to(tl.int64) * stride_vb + kv_head * stride_vh
    valid_row = valid_ptr + batch.to(tl.int64) * stride_valid_b
    keys = (k_rows, v_rows, valid_row, stride_kn, stride_kd, stride_vn, stride_vd, stride_valid_n)
    first, end, holes = _key_range(key_range_ptr, batch, seqlen_k, HAS_MASK)
    split, stop, row_end = _query_key_bounds(
        first, end, pid_m, offs_m, seqlen_q, query_offset, block_length, CAUSAL, BLOCK_M, BLOCK_N
    )
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # One copy of the loop per value of HOLES and, block-causal, per masking, as in the forward.
    for variant in tl.static_range(1 + HAS_MASK):
        if holes == variant:
            dq = _dq_steps(
                q, do, lse, delta, dq, keys, offs_n, offs_d, first, split, stop, row_end,
                qk_scale_log2, variant, False, DOT_DTYPE, DOT_PRECISION, BLOCK_N,
            )  # fmt: skip
            if CAUSAL:
                dq = _dq_steps(
                    q, do, lse, delta, dq, keys, offs_n, offs_d, split, stop, stop, row_end,
                    qk_scale_log2, variant, True, DOT_DTYPE, DOT_PRECISION, BLOCK_N,
                )  # fmt: skip

    dq = dq * softmax_scale
    tl.store(
        _tile_ptrs(
            dq_ptr, batch, head, offs_m, offs_d, stride_dqb, stride_dqm, stride_dqh, stride_dqd
        ),
        dq.to(dq_ptr.dtype.element_ty),
        mask=row_ok[:, None],
    )


# The 16-bit configs compile for sm_90 without register spills at D = 32/64/128. fp32 is the
# exact path, not the fast one: its configs fit H100 shared memory at D = 128 but spill a little.
_forward = _Launcher(
    _forward_kernel,
    tuned_configs=[
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    ],
    fp32_config=triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=8, num_stages=2),
    interpreter_config=triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}),
)
_dkdv = _Launcher(
    _dkdv_kernel,
    tuned_configs=[
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 128}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 128}, num_warps=8, num_stages=3),
    ],
    fp32_config=triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=8, num_stages=2),
    interpreter_config=triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}),
)
_dq = _Launcher(
    _dq_kernel,
    tuned_configs=[
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    ],
    fp32_config=triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=8, num_stages=2),
    interpreter_config=triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}),
)


def _dot_settings(dtype: torch.dtype) -> tuple[tl.dtype, str]:
    """Operand dtype and precision of the kernels' dots for inputs of ``dtype``.

    fp32 dots use three tf32 products ("tf32x3"): fp32 accuracy on the tensor cores, where plain
    tf32 would lose three digits and "ieee" compiles to slow, long-compiling FMA loops. The
    interpreter multiplies bf16 wrongly, so there bf16 tiles are widened to fp32 first.
    """
    if dtype == torch.float32 or (_INTERPRETING and dtype == torch.bfloat16):
        return tl.float32, "tf32x3"
    return _TORCH_TO_TRITON[dtype], "tf32"


def _key_ranges(key_valid: torch.Tensor) -> torch.Tensor:
    """``int32 [B, 3]``: per batch item, its first valid key, one past its last, and 1 where an
    invalid key lies between them; ``(0, 0, 0)`` for an item without a valid key."""
    batch, seqlen_k = key_valid.shape
    key_range = torch.empty((batch, 3), dtype=torch.int32, device=key_valid.device)
    _key_range_kernel[(batch,)](
        key_valid, *key_valid.stride(), seqlen_k, key_range, BLOCK=_RANGE_BLOCK
    )
    return key_range


def _mask_args(
    q: torch.Tensor, key_valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' mask arguments: the key mask as bytes and its key ranges (``_key_ranges``),
    or placeholders the kernels never read when there is no mask."""
    if key_valid is None:
        return (
            q.new_empty((1, 1), dtype=torch.uint8),
            q.new_empty((1, 3), dtype=torch.int32),
        )
    # Triton loads bool tensors as bytes; a same-size view costs nothing.
    valid = key_valid.view(torch.uint8)
    return valid, _key_ranges(valid)


def _causal_args(block_length: int, seqlen_q: int, seqlen_k: int) -> tuple[int, int]:
    """The kernels' runtime block-causal arguments: the block length and the key position of
    query row 0, ``Lk - Lq`` (the queries are the sequence's last positions; the op has checked
    ``Lq <= Lk``); zeros, unread, when ``block_length`` is 0 (non-causal)."""
    return block_length, (seqlen_k - seqlen_q if block_length else 0)


def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None, scale: float,
    block_length: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """See ``mosa_kernels.torch_kernels.attention_forward``; D in {32, 64, 128}, fp32/fp16/bf16.

    The statistics returned are the rows' log-sum-exp ``[B, Hq, Lq]`` float32, base 2 (of the
    scores times ``log2(e)``), as the backward reads them.
    """
    batch, seqlen_q, q_heads, head_dim = q.shape
    seqlen_k, kv_heads = k.shape[1], k.shape[2]
    valid, key_range = _mask_args(q, key_valid)
    dot_dtype, dot_precision = _dot_settings(q.dtype)
    qk_scale_log2 = scale * math.log2(math.e)

    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, q_heads, seqlen_q), dtype=torch.float32, device=q.device)
    grid = lambda meta: (triton.cdiv(seqlen_q, meta["BLOCK_M"]), batch * q_heads)  # noqa: E731
    _forward(
        grid,
        q.dtype,
        q,
        k,
        v,
        out,
        lse,
        valid,
        key_range,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
        *valid.stride(),
        q_heads,
        seqlen_q,
        seqlen_k,
        qk_scale_log2,
        *_causal_args(block_length, seqlen_q, seqlen_k),
        GROUP=q_heads // kv_heads,
        HEAD_DIM=head_dim,
        HAS_MASK=key_valid is not None,
        CAUSAL=block_length > 0,
        DOT_DTYPE=dot_dtype,
        DOT_PRECISION=dot_precision,
    )
    return out, lse


def attention_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    key_valid: torch.Tensor | None, out: torch.Tensor, stats: torch.Tensor, scale: float,
    needs_dq: bool, needs_dkdv: bool, block_length: int = 0,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    """See ``mosa_kernels.torch_kernels.attention_backward``; ``stats`` is the log-sum-exp that
    ``attention_forward`` returned.

    The key ranges are found again (one launch of B short programs) rather than kept from the
    forward, so that the forward returns one statistics tensor.
    """
    lse = stats
    batch, seqlen_q, q_heads, head_dim = q.shape
    seqlen_k, kv_heads = k.shape[1], k.shape[2]
    valid, key_range = _mask_args(q, key_valid)
    dot_dtype, dot_precision = _dot_settings(q.dtype)
    qk_scale_log2 = scale * math.log2(math.e)
    causal = _causal_args(block_length, seqlen_q, seqlen_k)
    common = {
        "GROUP": q_heads // kv_heads,
        "HEAD_DIM": head_dim,
        "HAS_MASK": key_valid is not None,
        "CAUSAL": block_length > 0,
        "DOT_DTYPE": dot_dtype,
        "DOT_PRECISION": dot_precision,
    }

    delta = torch.empty_like(lse)
    _delta_kernel[(triton.cdiv(seqlen_q, _DELTA_BLOCK_M), batch * q_heads)](
        out,
        grad_out,
        delta,
        *out.stride(),
        *grad_out.stride(),
        q_heads,
        seqlen_q,
        HEAD_DIM=head_dim,
        BLOCK_M=_DELTA_BLOCK_M,
    )

    dq = dk = dv = None
    if needs_dkdv:
        dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
        grid = lambda meta: (triton.cdiv(seqlen_k, meta["BLOCK_N"]), batch * kv_heads)  # noqa: E731
        _dkdv(
            grid,
            q.dtype,
            q,
            k,
            v,
            grad_out,
            dk,
            dv,
            lse,
            delta,
            valid,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *grad_out.stride(),
            *dk.stride(),
            *dv.stride(),
            *valid.stride(),
            q_heads,
            kv_heads,
            seqlen_q,
            seqlen_k,
            scale,
            qk_scale_log2,
            *causal,
            **common,
        )
    if needs_dq:
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        grid = lambda meta: (triton.cdiv(seqlen_q, meta["BLOCK_M"]), batch * q_heads)  # noqa: E731
        _dq(
            grid,
            q.dtype,
            q,
            k,
            v,
            grad_out,
            dq,
            lse,
            delta,
            valid,
            key_range,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *grad_out.stride(),
            *dq.stride(),
            *valid.stride(),
            q_heads,
            seqlen_q,
            seqlen_k,
            scale,
            qk_scale_log2,
            *causal,
            **common,
        )
    return dq, dk, dv

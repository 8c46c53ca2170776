"""The kernel interface every backend implements, written in plain torch.

This is the ``torch`` backend (used where neither Triton nor the C++ extension can run, and by
the ``cpu`` backend for attention, which has no C++ kernel) and the readable statement of what
``triton_kernels`` and ``csrc`` compute; ``mosa_kernels.interface`` lists the kernels. All
arithmetic is float32 whatever the input dtype (attention runs SDPA in the inputs' dtype);
in-place outputs keep the buffer's dtype.

Sampling state (``sample_update``), float32 ``[N, STATE_WIDTH]`` with these columns (their
numbers: ``mosa_kernels.interface``), over the
*confidence logits* ``c`` (the logits, divided by the temperature when the confidence is
tempered, excluded ids at -inf):
    M          running max of c                       (init -inf)
    S          sum exp(c - M)                         (init 0)
    E          sum exp(c - M) * (c - M)               (init 0)
    TOP2       second largest c                       (init -inf)
    BEST       best sampling score so far             (init -inf)
    BEST_C     c at the best-scoring column           (init -inf)
and ``best_index`` int64 ``[N]`` (init -1). Rescaling when M grows to M':
    S' = S e^(M - M'),   E' = (E + S (M - M')) e^(M - M').
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .interface import BEST, BEST_C, TOP2, E, M, S
from .random import gumbel


def _cols(col_offset: int, width: int, device: torch.device) -> torch.Tensor:
    return torch.arange(col_offset, col_offset + width, device=device)


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
    """Fold the vocabulary columns ``[col_offset, col_offset + Vc)`` into ``state``.

    ``logits``/``logits_uncond``: ``[N, Vc]``; with ``logits_uncond`` the logits are
    ``u + (cfg_scale + 1) (l - u)``. ``suppress``: int64 global ids set to -inf before
    sampling. ``exclude``: global ids left out of the confidence distribution only.
    Sampling score: ``l`` at temperature 0, else ``l / T + gumbel(seed, row, col)``; ties go to
    the lowest column.
    """
    n, width = logits.shape
    logit = logits.float()
    if logits_uncond is not None:
        uncond = logits_uncond.float()
        logit = uncond + (cfg_scale + 1.0) * (logit - uncond)
    cols = _cols(col_offset, width, logit.device)
    if suppress.numel():
        logit = logit.masked_fill(torch.isin(cols, suppress), float("-inf"))
    if temperature > 0:
        rows = torch.arange(n, device=logit.device)[:, None]
        score = logit / temperature + gumbel(seed, rows, cols[None]).float()
    else:
        score = logit
    conf = logit / temperature if (tempered_confidence and temperature > 0) else logit
    if exclude.numel():
        conf = conf.masked_fill(torch.isin(cols, exclude), float("-inf"))

    tile_best, tile_arg = score.max(dim=1)
    better = tile_best > state[:, BEST]
    state[:, BEST] = torch.where(better, tile_best, state[:, BEST])
    state[:, BEST_C] = torch.where(
        better, conf.gather(1, tile_arg[:, None])[:, 0], state[:, BEST_C]
    )
    best_index.copy_(torch.where(better, tile_arg + col_offset, best_index))

    top = conf.topk(min(2, width), dim=1).values
    tile_max = top[:, 0]
    tile_second = top[:, 1] if width > 1 else torch.full_like(tile_max, float("-inf"))
    old_max = state[:, M]
    new_max = torch.maximum(old_max, tile_max)
    finite = torch.isfinite(new_max)
    safe_max = torch.where(finite, new_max, torch.zeros_like(new_max))
    shifted = conf - safe_max[:, None]
    p = torch.exp(shifted)
    tile_s = p.sum(1)
    tile_e = torch.where(p > 0, p * shifted, torch.zeros_like(p)).sum(1)
    old_s, old_e = state[:, S], state[:, E]
    had_mass = old_s > 0
    drop = torch.where(had_mass, old_max - safe_max, torch.zeros_like(old_max))
    scale = torch.exp(drop)
    state[:, E] = torch.where(had_mass, (old_e + old_s * drop) * scale, old_e) + tile_e
    state[:, S] = old_s * scale + tile_s
    state[:, TOP2] = torch.maximum(
        torch.maximum(state[:, TOP2], tile_second), torch.minimum(old_max, tile_max)
    )
    state[:, M] = new_max


def select_transfer(
    confidence: torch.Tensor,
    is_masked: torch.Tensor,
    k: torch.Tensor | None,
    threshold: float | None,
    factor: float | None,
) -> torch.Tensor:
    """Which masked positions to commit, ``bool[B, W]`` (exactly one of k/threshold/factor).

    Positions are ranked per row among the masked ones by confidence, descending, ties to the
    lower index. ``k[B]``: rank < k. ``threshold``: confidence >= threshold, or rank 0.
    ``factor``: confidence >= 1 - factor / (rank + 2), or rank 0. Comparisons are float32:
    the threshold, and the factor bound computed in float64, are rounded to float32.
    """
    conf = confidence.float()
    width = conf.shape[1]
    by_conf = torch.sort(conf, dim=1, descending=True, stable=True).indices
    masked_first = torch.sort(
        is_masked.gather(1, by_conf).to(torch.int8), dim=1, descending=True, stable=True
    ).indices
    order = by_conf.gather(1, masked_first)
    positions = torch.arange(width, device=conf.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    if k is not None:
        take = rank < k[:, None]
    elif threshold is not None:
        take = (conf >= threshold) | (rank == 0)
    else:
        take = (conf >= (1.0 - factor / (rank + 2).double()).float()) | (rank == 0)
    return take & is_masked


def logprob_rows(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    ignore_index: int,
    grad: torch.Tensor | None,
    write_probs: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row log-softmax statistics of ``logits / temperature`` ``[n, V]``.

    Returns ``logp`` float32 ``[n, K]`` (``z[t] - lse``; 0 where ``t == ignore_index``) and
    ``lse`` float32 ``[n]``. In place, when asked: ``write_probs`` overwrites ``logits`` with
    ``softmax(z)``; ``grad`` (float32 ``[n, K]``, the upstream gradient of ``logp``)
    overwrites ``logits`` with d(sum grad * logp)/d logits
    ``= (scatter(grad at targets) - sum(grad) * softmax(z)) / temperature``.
    """
    z = logits.float() / temperature
    lse = torch.logsumexp(z, dim=1)
    keep = targets != ignore_index
    safe_targets = torch.where(keep, targets, torch.zeros_like(targets))
    logp = torch.where(
        keep, z.gather(1, safe_targets) - lse[:, None], torch.zeros_like(lse)[:, None]
    )
    if grad is not None:
        g = torch.where(keep, grad.float(), torch.zeros_like(grad, dtype=torch.float32))
        dz = torch.exp(z - lse[:, None]) * -g.sum(1, keepdim=True)
        dz.scatter_add_(1, safe_targets, g)
        logits.copy_(dz / temperature)
    elif write_probs:
        logits.copy_(torch.exp(z - lse[:, None]))
    return logp, lse


def kl_rows(
    logits: torch.Tensor, ref_logits: torch.Tensor, grad: torch.Tensor | None
) -> torch.Tensor:
    """KL(softmax(logits) || softmax(ref_logits)) per row, float32 ``[n]``.

    With ``grad`` (float32 ``[n]``), ``logits`` is overwritten in place with
    d(sum grad * kl)/d logits ``= grad * p * (d - E_p[d])``, ``d = logits - ref_logits``.
    """
    z = logits.float()
    zr = ref_logits.float()
    logp = torch.log_softmax(z, dim=1)
    p = logp.exp()
    kl = (p * (logp - torch.log_softmax(zr, dim=1))).sum(1)
    if grad is not None:
        d = z - zr
        centred = d - (p * d).sum(1, keepdim=True)
        logits.copy_(grad.float()[:, None] * p * centred)
    return kl


def _block_causal(
    key_valid: torch.Tensor | None, block_length: int, lq: int, lk: int, device: torch.device
) -> torch.Tensor:
    """``bool[B or 1, Lq, Lk]``: the keys each of the last ``lq`` positions may attend to
    (valid, in a block no later than the query's)."""
    key_block = torch.arange(lk, device=device) // block_length
    query_block = torch.arange(lk - lq, lk, device=device) // block_length
    allowed = (key_block[None, :] <= query_block[:, None])[None]
    return allowed if key_valid is None else allowed & key_valid[:, None, :]


def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor | None,
    scale: float,
    block_length: int,
) -> torch.Tensor:
    """SDPA over the allowed keys, in and out of the ``[B, L, H, D]`` layout (GQA included)."""
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    gqa = kh.shape[1] != qh.shape[1]
    if block_length:
        allowed = _block_causal(key_valid, block_length, q.shape[1], k.shape[1], q.device)
    elif key_valid is None:
        out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale, enable_gqa=gqa)
        return out.transpose(1, 2)
    else:
        allowed = key_valid[:, None, :]  # one row of keys for every query
    has_key = allowed.any(dim=2, keepdim=True)
    # SDPA makes NaN of a row with no allowed key: such a row attends to every key, then is
    # zeroed (masked_fill also zeroes the gradients that would flow through it).
    mask = (allowed | ~has_key)[:, None]
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return out.masked_fill(~has_key[:, None], 0.0).transpose(1, 2)


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor | None,
    scale: float,
    block_length: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the allowed keys: ``softmax(q k^T * scale) v`` per head.

    q ``[B, Lq, Hq, D]``, k/v ``[B, Lk, Hkv, D]`` with ``Hq % Hkv == 0`` (q head h reads kv
    head ``h // (Hq / Hkv)``); ``key_valid`` ``bool[B, Lk]`` or None (every key valid).
    ``block_length`` > 0 makes it block-causal: the queries are the sequence's last Lq
    positions, and query position i attends to key j only if ``j // block_length <=
    i // block_length``. Returns ``out`` ``[B, Lq, Hq, D]`` in q's dtype, zeros for a query
    row with no allowed key, and the statistics the backward needs: none here (an empty
    tensor), since it recomputes the forward. Runs ``scaled_dot_product_attention`` in the
    inputs' dtype.
    """
    return _attention(q, k, v, key_valid, scale, block_length), q.new_empty(0, dtype=torch.float32)


def attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor | None,
    out: torch.Tensor,
    stats: torch.Tensor,
    scale: float,
    needs_dq: bool,
    needs_dkdv: bool,
    block_length: int = 0,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(dq, dk, dv)`` of ``attention_forward`` for the output gradient ``grad_out``.

    The forward is run again under autograd and differentiated (SDPA's own backward), so ``out``
    and ``stats`` go unused; dq is None unless ``needs_dq``, dk and dv None unless
    ``needs_dkdv``. A query row with no allowed key gets zero gradients.
    """
    inputs = [
        t.detach().requires_grad_(needed)
        for t, needed in ((q, needs_dq), (k, needs_dkdv), (v, needs_dkdv))
    ]
    with torch.enable_grad():
        recomputed = _attention(*inputs, key_valid, scale, block_length)
    wanted = [t for t in inputs if t.requires_grad]
    grads = iter(torch.autograd.grad(recomputed, wanted, grad_out) if wanted else ())
    return tuple(next(grads) if t.requires_grad else None for t in inputs)

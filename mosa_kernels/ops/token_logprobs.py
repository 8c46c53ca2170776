"""Log-probabilities of chosen tokens and per-row KL, chunked so no ``[N, V]`` tensor exists.

``token_logprobs`` follows the cost note of docs/DESIGN.md §4.3: the gradient w.r.t. ``hidden`` is
``(sum_j g_ij W[t_ij] - (sum_j g_ij) E_p[W]) / T`` and ``E_p[W] = p @ W`` does not depend on
the upstream gradient, so the forward pass accumulates it chunk by chunk. With a frozen head
(LoRA) the backward then needs no matmul; a trainable head recomputes ``p`` once for ``dW``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dispatch import kernels_for
from ._checks import check_head, check_same_device, check_tensor, check_token_ids, rows_per_chunk

_CHUNK_BYTES = {"cuda": 512 << 20}  # big chunks keep a GPU's matmuls efficient
_CPU_CHUNK_BYTES = 64 << 20  # the CPU kernels want a chunk's logits near the caches
# A CPU matmul against the head runs ~25 % slower per row at 132 rows (64 MiB of V = 126464
# logits) than at 512 (d 512, 2 threads), so a CPU chunk keeps at least this many rows.
_CPU_MIN_ROWS = 512


def _chunk_rows(hidden: torch.Tensor, vocab_size: int, buffers: int, requested: int | None) -> int:
    """Rows per chunk: ``requested``, else as many as keep ``buffers`` chunk-sized logits
    tensors within the device's budget (on the CPU, at least ``_CPU_MIN_ROWS / buffers``)."""
    device = hidden.device.type
    budget = _CHUNK_BYTES.get(device, _CPU_CHUNK_BYTES) // buffers
    rows = rows_per_chunk(vocab_size, hidden.element_size(), budget, requested)
    if requested is None and device == "cpu":
        rows = max(rows, _CPU_MIN_ROWS // buffers)
    return rows


def _linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(h, weight, bias)


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, ignore_index, chunk):
        kernels = kernels_for(hidden.device)
        n, k = targets.shape
        logp = torch.empty(n, k, dtype=torch.float32, device=hidden.device)
        need_hidden_grad = ctx.needs_input_grad[0]
        expected_w = (
            torch.empty(n, weight.shape[1], dtype=torch.float32, device=hidden.device)
            if need_hidden_grad
            else None
        )
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            logits = _linear(hidden[rows], weight, bias)
            logp[rows], _ = kernels.logprob_rows(
                logits, targets[rows], temperature, ignore_index, None, need_hidden_grad
            )
            if need_hidden_grad:
                expected_w[rows] = logits @ weight  # logits now holds p
        ctx.save_for_backward(hidden, weight, bias, targets, expected_w)
        ctx.settings = (temperature, ignore_index, chunk)
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        hidden, weight, bias, targets, expected_w = ctx.saved_tensors
        temperature, ignore_index, chunk = ctx.settings
        keep = targets != ignore_index
        g = torch.where(keep, grad_logp.float(), torch.zeros((), device=grad_logp.device))
        safe_targets = torch.where(keep, targets, torch.zeros_like(targets))
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            picked = F.embedding_bag(
                safe_targets, weight, per_sample_weights=g.to(weight.dtype), mode="sum"
            )
            grad_hidden = (picked.float() - g.sum(1, keepdim=True) * expected_w) / temperature
            grad_hidden = grad_hidden.to(hidden.dtype)
        if ctx.needs_input_grad[1] or (bias is not None and ctx.needs_input_grad[2]):
            kernels = kernels_for(hidden.device)
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            grad_bias = (
                None
                if bias is None
                else torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
            )
            for start in range(0, hidden.shape[0], chunk):
                rows = slice(start, start + chunk)
                logits = _linear(hidden[rows], weight, bias)
                kernels.logprob_rows(
                    logits, targets[rows], temperature, ignore_index, g[rows], False
                )
                grad_weight.addmm_(logits.T.float(), hidden[rows].float())
                if grad_bias is not None:
                    grad_bias += logits.float().sum(0)
            grad_weight = grad_weight.to(weight.dtype)
            grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def _check_temperature(temperature: float) -> float:
    if not (temperature > 0 and temperature != float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return float(temperature)


def _flatten_targets(targets: torch.Tensor, lead: torch.Size) -> tuple[torch.Tensor, bool]:
    """Targets as ``[N, K]``; returns whether the caller gave one target per row."""
    check_tensor("targets", targets, ndim_min=0, floating=False)
    if targets.shape == lead:
        return targets.reshape(-1, 1).to(torch.int64).contiguous(), True
    if targets.dim() == len(lead) + 1 and targets.shape[:-1] == lead:
        if targets.shape[-1] == 0:
            raise ValueError("targets has K = 0 tokens per row; give at least one")
        return targets.reshape(-1, targets.shape[-1]).to(torch.int64).contiguous(), False
    raise ValueError(
        f"targets must be shaped {tuple(lead)} (one token per row) or {tuple(lead)} + (K,), "
        f"got {tuple(targets.shape)}"
    )


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """``log softmax(hidden @ weight.T / T)[targets]`` without an ``[N, V]`` tensor.

    Args:
        hidden: ``[..., d]``; weight: the LM head ``[V, d]`` (optional ``bias [V]``).
        targets: ``[...]`` (one token per row) or ``[..., K]`` (K tokens per row sharing one
            log-sum-exp). ``ignore_index`` entries give 0 and no gradient.
        chunk_rows: rows per chunk (default: as many as keep a chunk's logits near 64 MiB on
            the CPU, but at least 512 rows; 512 MiB on a GPU).

    Returns float32 log-probabilities shaped like ``targets``; differentiable w.r.t.
    ``hidden``, ``weight`` and ``bias``.
    """
    check_head("hidden", hidden, weight, bias)
    temperature = _check_temperature(temperature)
    check_same_device(hidden=hidden, weight=weight, bias=bias, targets=targets)
    lead = hidden.shape[:-1]
    flat_targets, single = _flatten_targets(targets, lead)
    check_token_ids("targets", flat_targets, weight.shape[0], ignore_index)
    chunk = _chunk_rows(hidden, weight.shape[0], 1, chunk_rows)
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    logp = _TokenLogprobs.apply(
        flat_hidden, weight, bias, flat_targets, temperature, ignore_index, chunk
    )
    return logp.reshape(targets.shape) if single else logp.reshape(*lead, -1)


class _LogprobsFromLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, temperature, ignore_index):
        logp, _ = kernels_for(logits.device).logprob_rows(
            logits, targets, temperature, ignore_index, None, False
        )
        ctx.save_for_backward(logits, targets)
        ctx.settings = (temperature, ignore_index)
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        logits, targets = ctx.saved_tensors
        temperature, ignore_index = ctx.settings
        grad_logits = logits.clone()
        kernels_for(logits.device).logprob_rows(
            grad_logits, targets, temperature, ignore_index, grad_logp.float().contiguous(), False
        )
        return grad_logits, None, None, None


def logprobs_from_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> torch.Tensor:
    """``log softmax(logits / T)[targets]`` for models that only give logits ``[..., V]``.

    ``targets`` is ``[...]`` or ``[..., K]`` as in :func:`token_logprobs`; one pass per row,
    no log-softmax tensor is stored. Differentiable w.r.t. ``logits``.
    """
    check_tensor("logits", logits, floating=True)
    temperature = _check_temperature(temperature)
    check_same_device(logits=logits, targets=targets)
    lead = logits.shape[:-1]
    flat_targets, single = _flatten_targets(targets, lead)
    check_token_ids("targets", flat_targets, logits.shape[-1], ignore_index)
    flat_logits = logits.reshape(-1, logits.shape[-1]).contiguous()
    logp = _LogprobsFromLogits.apply(flat_logits, flat_targets, temperature, ignore_index)
    return logp.reshape(targets.shape) if single else logp.reshape(*lead, -1)


class _TokenKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, ref_hidden, weight, ref_weight, bias, chunk):
        kernels = kernels_for(hidden.device)
        kl = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        # With a frozen head (LoRA) d kl / d hidden is known up to the upstream scale, so the
        # forward computes it while it holds the logits and the backward needs no matmul.
        head_trains = ctx.needs_input_grad[2] or (bias is not None and ctx.needs_input_grad[4])
        direction = None
        if ctx.needs_input_grad[0] and not head_trains:
            direction = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
            unit = torch.ones(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        with torch.no_grad():
            for start in range(0, hidden.shape[0], chunk):
                rows = slice(start, start + chunk)
                logits = _linear(hidden[rows], weight, bias)
                ref_logits = _linear(ref_hidden[rows], ref_weight, bias)
                if direction is None:
                    kl[rows] = kernels.kl_rows(logits, ref_logits, None)
                else:
                    kl[rows] = kernels.kl_rows(logits, ref_logits, unit[rows])
                    direction[rows] = logits @ weight  # logits now hold d kl / d logits
        ctx.save_for_backward(hidden, ref_hidden, weight, ref_weight, bias, direction)
        ctx.chunk = chunk
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        hidden, ref_hidden, weight, ref_weight, bias, direction = ctx.saved_tensors
        g = grad_kl.float().contiguous()
        if direction is not None:
            return (g[:, None] * direction).to(hidden.dtype), None, None, None, None, None
        kernels = kernels_for(hidden.device)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        need_b = bias is not None and ctx.needs_input_grad[4]
        grad_hidden = torch.empty_like(hidden) if need_h else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        )
        grad_bias = (
            torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        )
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            dlogits = _linear(hidden[rows], weight, bias)
            kernels.kl_rows(dlogits, _linear(ref_hidden[rows], ref_weight, bias), g[rows])
            if need_h:
                grad_hidden[rows] = dlogits @ weight
            if need_w:
                grad_weight.addmm_(dlogits.T.float(), hidden[rows].float())
            if need_b:
                grad_bias += dlogits.float().sum(0)
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, None, grad_weight, None, grad_bias, None


def token_kl(
    hidden: torch.Tensor,
    ref_hidden: torch.Tensor,
    weight: torch.Tensor,
    *,
    ref_weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Per-row ``KL(softmax(hidden @ W.T) || softmax(ref_hidden @ W_ref.T))`` over the vocabulary.

    ``ref_weight`` defaults to ``weight`` (a frozen head shared by policy and reference); the
    reference side gets no gradient. Returns float32 ``[...]``; differentiable w.r.t.
    ``hidden``, ``weight`` and ``bias``. Memory stays O(chunk x V): with a frozen head the
    forward also computes d kl / d hidden (``[..., d]`` float32, no matmul left for the
    backward); a trainable head makes the backward recompute both logits chunk by chunk.
    """
    check_head("hidden", hidden, weight, bias)
    ref_weight = weight if ref_weight is None else ref_weight
    check_head("ref_hidden", ref_hidden, ref_weight, bias)
    if ref_hidden.shape != hidden.shape:
        raise ValueError(
            f"ref_hidden must match hidden's shape {tuple(hidden.shape)}, got {tuple(ref_hidden.shape)}"
        )
    if ref_weight.shape != weight.shape:
        raise ValueError(
            f"ref_weight must match weight's shape {tuple(weight.shape)}, got {tuple(ref_weight.shape)}"
        )
    check_same_device(
        hidden=hidden, ref_hidden=ref_hidden, weight=weight, ref_weight=ref_weight, bias=bias
    )
    chunk = _chunk_rows(hidden, weight.shape[0], 2, chunk_rows)
    lead = hidden.shape[:-1]
    d = hidden.shape[-1]
    kl = _TokenKL.apply(
        hidden.reshape(-1, d),
        ref_hidden.reshape(-1, d).detach(),
        weight,
        ref_weight.detach(),
        bias,
        chunk,
    )
    return kl.reshape(lead)

"""Token log-probabilities and per-row KL, the spec: full logits and log_softmax in float64."""

from __future__ import annotations

import torch


def token_logprobs(hidden, weight, targets, *, bias=None, temperature=1.0, ignore_index=-100):
    """``log softmax(hidden @ weight.T + bias) / T)[targets]``; ``targets`` ``[N]`` or ``[N, K]``."""
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    return logprobs_from_logits(logits, targets, temperature=temperature, ignore_index=ignore_index)


def logprobs_from_logits(logits, targets, *, temperature=1.0, ignore_index=-100):
    logp = torch.log_softmax(logits / temperature, dim=-1)
    single = targets.dim() == logits.dim() - 1
    t = targets[..., None] if single else targets
    keep = t != ignore_index
    picked = logp.gather(-1, torch.where(keep, t, torch.zeros_like(t)))
    picked = torch.where(keep, picked, torch.zeros_like(picked))
    return picked[..., 0] if single else picked


def token_kl(hidden, ref_hidden, weight, *, ref_weight=None, bias=None):
    """``KL(softmax(hidden @ W.T) || softmax(ref_hidden @ W_ref.T))`` per row.

    The reference side is a constant: no gradient reaches ``ref_hidden`` or ``ref_weight``.
    """
    ref_weight = weight if ref_weight is None else ref_weight
    logits = hidden @ weight.T
    ref_logits = ref_hidden.detach() @ ref_weight.detach().T
    if bias is not None:
        logits, ref_logits = logits + bias, ref_logits + bias.detach()
    logp = torch.log_softmax(logits, dim=-1)
    logq = torch.log_softmax(ref_logits, dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)

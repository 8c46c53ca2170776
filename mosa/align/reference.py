"""The MOSA objective written the straightforward way: the spec the fused one is tested against
and the baseline ``benchmarks/align.py`` measures.

Full ``[B, L, V]`` logits from both models, an explicit ``log_softmax``, an explicit loop over
rows and offsets, and the KL summed over the whole vocabulary. On a block canvas (a batch with
``block_length``) both models run block-causally and each row's response is sliced from its own
``response_start``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .objective import IGNORE, AlignBatch, EosBatch, ObjectiveTerms

Logits = Callable[..., torch.Tensor]
"""``(input_ids, attention_mask) -> logits [B, L, V]`` (position i predicts token i); called
with ``block_length=`` too on a block canvas."""


def _response_logits(logits: Logits, batch) -> torch.Tensor:
    """``[B, G, V]`` logits of each row's response positions, at least float32."""
    gen_length = batch.gen_length
    if batch.block_length is None:
        return _widened(logits(batch.input_ids, batch.attention_mask)[:, -gen_length:])
    full = logits(batch.input_ids, batch.attention_mask, block_length=batch.block_length)
    rows = [
        full[row, start : start + gen_length]
        for row, start in enumerate(batch.response_start.tolist())
    ]
    return _widened(torch.stack(rows))


def _widened(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _best_offset(logp: torch.Tensor, sentence: list[int], window: tuple[int, int], allowed):
    gen_length = logp.shape[0]
    best_score, best_k = None, None
    for k in range(window[0], window[1] + 1):
        if k + len(sentence) > gen_length:
            break
        if allowed is not None and not allowed[k - window[0]]:
            continue
        score = sum(logp[k + m, token] for m, token in enumerate(sentence))
        if best_score is None or score > best_score:
            best_score, best_k = score, k
    return best_score, best_k


def reference_terms(
    policy: Logits, reference: Logits, batch: AlignBatch, window: tuple[int, int]
) -> ObjectiveTerms:
    """The same terms as ``mosa_terms``, from full logits."""
    logits = _response_logits(policy, batch)
    with torch.no_grad():
        ref_logits = _response_logits(reference, batch)
    logp = torch.log_softmax(logits, dim=-1)
    ref_logp = torch.log_softmax(ref_logits, dim=-1)
    terms = {"plus": [], "minus": [], "best_plus": [], "best_minus": []}
    for row in range(batch.input_ids.shape[0]):
        for name, sentences, allowed in (
            ("plus", batch.positive, batch.allowed_plus),
            ("minus", batch.negative, batch.allowed_minus),
        ):
            sentence = [t for t in sentences[row].tolist() if t != IGNORE]
            row_allowed = None if allowed is None else allowed[row].tolist()
            score, k = _best_offset(logp[row], sentence, window, row_allowed)
            terms[name].append(score)
            terms[f"best_{name}"].append(k)
    kl = (logp.exp() * (logp - ref_logp)).sum(dim=(1, 2))
    return ObjectiveTerms(
        torch.stack(terms["plus"]),
        torch.stack(terms["minus"]),
        kl,
        torch.tensor(terms["best_plus"]),
        torch.tensor(terms["best_minus"]),
    )


def reference_a2d_terms(policy: Logits, batch: EosBatch) -> ObjectiveTerms:
    """The same terms as ``a2d_terms``, from full logits: each row's mean ``log p(EOS)`` over
    its target positions."""
    logp = torch.log_softmax(_response_logits(policy, batch), dim=-1)
    eos = []
    for row in range(batch.targets.shape[0]):
        scores = [
            logp[row, j, token]
            for j, token in enumerate(batch.targets[row].tolist())
            if token != IGNORE
        ]
        eos.append(torch.stack(scores).mean() if scores else logp.new_zeros(()))
    eos = torch.stack(eos)
    zeros = torch.zeros_like(eos)
    none = torch.zeros(len(eos), dtype=torch.long)
    return ObjectiveTerms(eos, zeros, zeros, none, none)

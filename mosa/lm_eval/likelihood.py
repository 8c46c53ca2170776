"""The Monte-Carlo masked log-likelihood LLaDA's evaluation uses (its ``eval_llada.py``).

A masked diffusion LM gives no left-to-right likelihood; its evaluation scores a continuation
by the diffusion bound instead. Each sample masks ``c`` of the ``T`` continuation tokens (the
prefix is never masked) and adds the log-probabilities of the masked tokens weighted by
``T / c`` (one over the masking ratio); the estimate is the mean over ``mc_num`` samples. The
counts of one batch of ``b`` samples are stratified as LLaDA draws them: ``k`` uniform in
``[1, T]``, then ``round(k + i T / b)`` wrapped into ``[1, T]``, so a batch covers the masking
ratios evenly. A one-token continuation is always fully masked, so its estimate is exact.
"""

from __future__ import annotations

import torch

from mosa.models import DiffusionLM
from mosa_kernels import token_logprobs


def mask_counts(target_length: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """How many continuation tokens each of ``batch`` samples masks, ``int64[batch]``."""
    k = int(torch.randint(1, target_length + 1, (), generator=generator))
    spread = torch.linspace(k, k + (batch - 1) * target_length / batch, batch)
    return (torch.round(spread).long() - 1) % target_length + 1


def random_masks(counts: torch.Tensor, target_length: int, generator: torch.Generator):
    """``bool[batch, target_length]``: row i masks ``counts[i]`` positions chosen at random."""
    ranks = torch.rand(len(counts), target_length, generator=generator).argsort(dim=1)
    return ranks < counts[:, None]


@torch.no_grad()
def masked_loglikelihood(
    model: DiffusionLM,
    prefix: torch.Tensor,
    target: torch.Tensor,
    *,
    mask_id: int,
    mc_num: int = 128,
    batch_size: int = 32,
    generator: torch.Generator,
) -> float:
    """The estimate of ``log p(target | prefix)`` from ``mc_num`` masked samples.

    ``prefix`` / ``target``: ``int[P]`` / ``int[T]`` token ids; samples run ``batch_size`` at
    a time (``mc_num`` must be a multiple); ``generator`` (CPU) draws the masks. The masked
    tokens' log-probabilities come from the fused ``token_logprobs`` on the hidden states, so
    no ``[batch, L, V]`` logits are formed. An empty target has log-likelihood 0.
    """
    if mc_num < 1 or batch_size < 1 or mc_num % batch_size:
        raise ValueError(
            f"mc_num ({mc_num}) must be a positive multiple of the Monte-Carlo batch size ({batch_size})"
        )
    target_length = len(target)
    if target_length == 0:
        return 0.0
    device = model.device
    sequence = torch.cat([prefix, target]).to(device)[None].expand(batch_size, -1)
    total = torch.zeros((), dtype=torch.float32, device=device)
    for _ in range(mc_num // batch_size):
        counts = mask_counts(target_length, batch_size, generator)
        masked = torch.cat(
            [
                torch.zeros(batch_size, len(prefix), dtype=torch.bool),
                random_masks(counts, target_length, generator),
            ],
            dim=1,
        ).to(device)
        hidden = model(sequence.masked_fill(masked, mask_id)).hidden_states
        rows, positions = masked.nonzero(as_tuple=True)
        # Dream predicts token i from hidden state i - 1 (position 0 from its own).
        sources = (positions - model.logits_shift).clamp(min=0)
        logp = token_logprobs(
            hidden[rows, sources],
            model.lm_head_weight,
            sequence[rows, positions],
            bias=model.lm_head_bias,
        )
        weights = target_length / counts.to(device)[rows]
        total += (logp * weights).sum() / batch_size
    return float(total) / (mc_num // batch_size)

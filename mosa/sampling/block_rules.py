"""LLaDA2.x's per-step decisions, on the device for a whole batch (docs/DESIGN.md §6).

Each takes ``[B, W]`` tensors of the block being decoded (``W = block_length``) and reads
nothing on the host, so a step built on them can be replayed as a CUDA graph.
"""

from __future__ import annotations

import torch

from mosa_kernels.ops.select_transfer import select_scheduled


def threshold_or_top_k(
    confidence: torch.Tensor,
    candidate: torch.Tensor,
    k: torch.Tensor,
    threshold: float,
    rank: torch.Tensor | None = None,
) -> torch.Tensor:
    """The positions a step commits: every candidate whose confidence is above ``threshold``
    (strictly, as published) when there are at least ``k[b]`` of them, else the ``k[b]`` most
    confident candidates (all of them when fewer; ties to the lower position), or the ``k[b]``
    of the highest ``rank`` when given (DiffuGuard's annealed score).

    ``select_transfer``'s threshold rule is ``>=`` and takes at least one, which is not this
    rule, so the two halves are composed here.
    """
    above = candidate & (confidence > threshold)
    best = select_scheduled(confidence if rank is None else rank, candidate, k)
    return torch.where((above.sum(dim=1) >= k)[:, None], above, best)


def edits(
    token: torch.Tensor,
    confidence: torch.Tensor,
    current: torch.Tensor,
    editable: torch.Tensor,
    editing_threshold: float,
) -> torch.Tensor:
    """LLaDA2.1's token editing: the editable positions (decoded, not prompt) whose predicted
    token differs from the one in place with confidence above ``editing_threshold``."""
    return editable & (confidence > editing_threshold) & (token != current)


def confirmed_eos(
    x: torch.Tensor,
    row_start: torch.Tensor,
    response_start: torch.Tensor,
    eos_id: int,
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA2.0's ``eos_early_stop`` test on the canvas ``x [B, W]`` (slots from 0): whether
    each row's first EOS has no mask between its response start and it, and whether that EOS
    lies in the prompt.

    As published, the first EOS is searched from the sequence's first token, prompt included
    (``row_start``: the row's first slot; padding is not searched), so an EOS in the prompt
    confirms at once and the response is empty.
    """
    slots = torch.arange(x.shape[1], device=x.device)[None]
    is_eos = (x == eos_id) & (slots >= row_start[:, None])
    has_eos = is_eos.any(dim=1)
    first = torch.where(has_eos, is_eos.int().argmax(dim=1), x.shape[1])
    gap = (x == mask_id) & (slots >= response_start[:, None]) & (slots < first[:, None])
    return has_eos & ~gap.any(dim=1), has_eos & (first < response_start)


def response_holds_eos(
    x: torch.Tensor, response_start: torch.Tensor, eos_id: int, mask_id: int | None
) -> torch.Tensor:
    """``bool[B]``: the decoded response ``[response_start, W)`` of each row holds an EOS (and,
    with ``mask_id``, no mask): LLaDA2.0 stops after such a block, LLaDA2.1's
    ``eos_early_stop`` after one that is also fully decoded."""
    slots = torch.arange(x.shape[1], device=x.device)[None]
    response = slots >= response_start[:, None]
    holds = ((x == eos_id) & response).any(dim=1)
    if mask_id is None:
        return holds
    return holds & ~((x == mask_id) & response).any(dim=1)

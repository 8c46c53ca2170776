"""``select_transfer``: which masked positions a denoising step commits."""

from __future__ import annotations

import torch

from ..dispatch import kernels_for
from ._checks import check_same_device, check_tensor


def check_threshold(threshold: float) -> None:
    """Parallel decoding's confidence threshold must be a number in (0, 1]: at 0 or below
    every masked position passes at the first step; above 1 none ever does, so each step
    silently commits only its best one."""
    # The comparison is False for NaN, so NaN is refused too.
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0 < threshold <= 1
    ):
        raise ValueError(f"threshold must be a confidence in (0, 1], got {threshold!r}")


def select_transfer(
    confidence: torch.Tensor,
    is_masked: torch.Tensor,
    *,
    k: int | torch.Tensor | None = None,
    threshold: float | None = None,
    factor: float | None = None,
) -> torch.Tensor:
    """Choose the positions to commit, ``bool[B, W]``, on device and without host sync.

    Positions are ranked per row among the masked ones by confidence (descending, ties to the
    lower index). Give exactly one rule:

    - ``k`` (int or int tensor ``[B]``): the ``k`` best masked positions of each row (LLaDA's
      schedule); all of them when fewer are masked.
    - ``threshold``: every masked position with confidence >= threshold, and at least the best
      one (Fast-dLLM parallel decoding).
    - ``factor``: the n-th best (1-based) is taken if its confidence >= 1 - factor / (n + 1),
      and at least the best one (Fast-dLLM dynamic).

    Rows with nothing masked commit nothing. A tensor ``k`` is checked to be >= 0 here, which
    reads it on the host once; steps that must not synchronise (a CUDA graph's) take
    ``select_scheduled``, whose ``k`` is valid by construction.
    """
    check_tensor("confidence", confidence, ndim_min=2, floating=True)
    check_tensor("is_masked", is_masked, ndim_min=2)
    if confidence.dim() != 2:
        raise ValueError(f"confidence must be [B, W], got shape {tuple(confidence.shape)}")
    if is_masked.dtype != torch.bool or is_masked.shape != confidence.shape:
        raise ValueError(
            f"is_masked must be a bool tensor shaped like confidence {tuple(confidence.shape)}, "
            f"got {is_masked.dtype} {tuple(is_masked.shape)}"
        )
    device = check_same_device(confidence=confidence, is_masked=is_masked)
    given = [
        name
        for name, v in (("k", k), ("threshold", threshold), ("factor", factor))
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(f"give exactly one of k, threshold, factor (got {given or 'none'})")
    k_rows = None
    if k is not None:
        if isinstance(k, torch.Tensor):
            if k.is_floating_point() or k.shape not in ((), (confidence.shape[0],)):
                raise ValueError(
                    f"k must be an int or an int tensor of shape [B={confidence.shape[0]}]"
                )
            check_same_device(confidence=confidence, k=k)
            k_rows = k.to(torch.int64).expand(confidence.shape[0]).contiguous()
            if k_rows.numel() and int(k_rows.min()) < 0:
                row = int(k_rows.argmin())
                raise ValueError(
                    f"k must be >= 0 in every row, got k[{row}] = {int(k_rows[row])}; "
                    "give each row's number of positions to commit"
                )
        else:
            if int(k) != k or k < 0:
                raise ValueError(f"k must be a non-negative int, got {k!r}")
            k_rows = torch.full((confidence.shape[0],), int(k), dtype=torch.int64, device=device)
    if threshold is not None:
        check_threshold(threshold)
    if factor is not None and not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    return kernels_for(device).select_transfer(
        confidence.contiguous(), is_masked.contiguous(), k_rows,
        None if threshold is None else float(threshold), None if factor is None else float(factor),
    )  # fmt: skip


def select_scheduled(confidence: torch.Tensor, is_masked: torch.Tensor, k: torch.Tensor):
    """``select_transfer``'s ``k`` rule for a sampler's step: ``confidence`` and ``is_masked``
    ``[B, W]`` on one device and ``k`` int64 ``[B]``, all valid by construction (the
    schedule's counts), so nothing is checked and nothing is read on the host."""
    return kernels_for(confidence.device).select_transfer(
        confidence.contiguous(), is_masked.contiguous(), k.contiguous(), None, None
    )

"""Which masked positions to commit, the spec: an explicit loop over rows."""

from __future__ import annotations

import torch


def select_transfer(
    confidence: torch.Tensor,
    is_masked: torch.Tensor,
    *,
    k=None,
    threshold: float | None = None,
    factor: float | None = None,
) -> torch.Tensor:
    """Same contract as ``mosa_kernels.select_transfer``.

    Comparisons happen in float32, as torch compares a float32 tensor with a Python number
    (Fast-dLLM's code): the threshold, and each factor bound ``1 - factor / (rank + 2)``
    computed in float64, are rounded to float32 first.
    """
    batch, width = confidence.shape
    chosen = torch.zeros(batch, width, dtype=torch.bool)
    for row in range(batch):
        masked = [i for i in range(width) if is_masked[row, i]]
        # Descending confidence, ties to the lower position.
        ranked = sorted(masked, key=lambda i: (-float(confidence[row, i]), i))
        for rank, pos in enumerate(ranked):
            value = float(confidence[row, pos].float())
            if k is not None:
                limit = int(k[row]) if isinstance(k, torch.Tensor) and k.dim() else int(k)
                take = rank < limit
            elif threshold is not None:
                take = rank == 0 or value >= _float32(threshold)
            else:
                take = rank == 0 or value >= _float32(1.0 - factor / (rank + 2))
            chosen[row, pos] = take
    return chosen.to(confidence.device)


def _float32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float64).float())

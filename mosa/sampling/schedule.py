"""How many masked positions each denoising step commits (LLaDA and Dream schedules)."""

from __future__ import annotations

import torch


def llada_transfer_counts(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's ``get_num_transfer_tokens``: ``int64[B, steps]``, on device, no host sync.

    Each row's masked count ``n`` is split evenly over ``steps``; the first ``n % steps``
    steps take one extra.
    """
    counts = masked.sum(dim=1, keepdim=True)
    step = torch.arange(steps, device=masked.device)[None]
    return counts // steps + (step < counts % steps).to(torch.int64)


def dream_timesteps(steps: int, eps: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Dream's schedule ``linspace(1, eps, steps + 1)`` (float32, as in its generation code)."""
    return torch.linspace(1, eps, steps + 1, device=device)


def dream_transfer_count(
    masked: torch.Tensor, timesteps: torch.Tensor, step: int | torch.Tensor
) -> torch.Tensor:
    """Dream's count for ``step``: ``int(n_mean * (1 - s / t))``, everything on the last step,
    as a 0-d int64 tensor on the device (no host read, so a CUDA graph can replay it with
    ``step`` a 0-d tensor).

    ``n_mean`` is the masked count averaged over the batch; the arithmetic is float32 as in
    Dream's code, and ``.long()`` truncates as its ``int()`` does, so the counts agree exactly.
    """
    n_mean = masked.sum() / masked.shape[0]
    # index_select, not timesteps[step]: indexing with a tensor reads it on the host.
    index = torch.as_tensor(step, device=timesteps.device).view(1)
    t, s = timesteps.index_select(0, torch.cat([index, index + 1])).to(masked.device)
    last = (index[0] == timesteps.numel() - 2).to(masked.device)
    return torch.where(last, n_mean, n_mean * (1 - s / t)).long()

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


def dream_transfer_count(masked: torch.Tensor, timesteps: torch.Tensor, step: int) -> int:
    """Dream's count for ``step``: ``int(n_mean * (1 - s / t))``, everything on the last step.

    ``n_mean`` is the masked count averaged over the batch; the arithmetic is float32 as in
    Dream's code, so the truncation agrees with it exactly.
    """
    n_mean = masked.sum() / masked.shape[0]
    if step == timesteps.numel() - 2:
        return int(n_mean)
    t, s = timesteps[step], timesteps[step + 1]
    return int(n_mean * (1 - s / t))

"""What the samplers return when asked for more than the sequences."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GenerateOutput:
    """The result of ``generate(..., return_trace=True)`` / ``diffusion_generate(...,
    return_dict_in_generate=True)`` / ``block_generate(..., return_trace=True)``.

    Attributes:
        sequences: ``int64[B, P + G]``, prompt included.
        commit_step: ``int64[B, G]``, the step (counted over the whole generation, from 0) at
            which each response position was committed; -1 where the model never committed
            it (fixed tokens, positions filled by ``stop_at_eos``). Sorting positions by it
            gives the decoding order. ``block_generate`` counts each row's own steps (as if
            it ran alone) and keeps the last write (LLaDA2.1 edits decoded tokens).
        steps: the number of denoising steps run.
        history: the canvas after every step (Dream's ``output_history``), or None.
    """

    sequences: torch.Tensor
    commit_step: torch.Tensor
    steps: int
    history: list[torch.Tensor] | None = None


def record_commits(commit_step, commit, token, mask_id, start, prompt_length, step):
    """Writes ``step`` (an int or a 0-d tensor on the device) into ``commit_step [B, G]`` where
    ``commit [B, W]`` (window from position ``start``) filled a response position; committing
    the mask token itself fills nothing."""
    filled = commit & (token != mask_id)
    in_response = filled[:, max(prompt_length - start, 0) :]
    first = max(start - prompt_length, 0)
    region = commit_step[:, first : first + in_response.shape[1]]
    # Not masked_fill_: with a tensor ``step`` it reads the value on the host, which a step
    # replayed as a CUDA graph must not do (``where`` takes it on the device).
    region.copy_(torch.where(in_response, step, region))

"""The sequence a sampler denoises: prompt, then a response canvas of masks (and fixed tokens)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mosa_kernels.ops._checks import check_positive_int


@dataclass
class Canvas:
    """``x`` ``[B, P + G]`` (prompt then response) and its key mask.

    ``attention_mask`` is bool ``[B, P + G]`` (False at left padding) or None when nothing is
    padded; ``prompt_length`` is P.
    """

    x: torch.Tensor
    attention_mask: torch.Tensor | None
    prompt_length: int


def build_canvas(
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None,
    gen_length: int,
    mask_id: int,
    response: torch.Tensor | None = None,
    prompt_masks: bool = False,
) -> Canvas:
    """Checks the sampler's inputs and lays out the canvas.

    Args:
        prompt: ``int[B, P]`` token ids (``[P]`` is taken as one row), left-padded when rows
            differ in length.
        attention_mask: ``[B, P]``, nonzero at real tokens; padding must not hold ``mask_id``.
        gen_length: response length G.
        response: optional ``int[G]`` or ``int[B, G]`` initial response: ``mask_id`` where the
            sampler fills in, any other id is a fixed token that is never remasked.
        prompt_masks: allow ``mask_id`` among the prompt's real tokens; the samplers then fill
            those positions too, as LLaDA's reference does. Refused by default: a mask id in a
            prompt is most often a tokenizer mix-up, and its filled position comes back as
            part of the prompt.
    """
    if (
        not isinstance(prompt, torch.Tensor)
        or prompt.is_floating_point()
        or prompt.dim() not in (1, 2)
    ):
        raise TypeError("prompt must be an integer tensor of token ids, shaped [B, P] or [P]")
    if prompt.dim() == 1:
        prompt = prompt[None]
    batch, prompt_length = prompt.shape
    if batch == 0 or prompt_length == 0:
        raise ValueError(
            f"prompt is empty (shape {tuple(prompt.shape)}); give at least one token per row"
        )
    check_positive_int("gen_length", gen_length)
    device = prompt.device
    x = torch.full((batch, prompt_length + gen_length), mask_id, dtype=torch.long, device=device)
    x[:, :prompt_length] = prompt
    if response is not None:
        if not isinstance(response, torch.Tensor) or response.is_floating_point():
            raise TypeError("response must be an integer tensor of token ids (mask_id = to fill)")
        if response.shape not in ((gen_length,), (1, gen_length), (batch, gen_length)):
            raise ValueError(
                f"response must be shaped [{gen_length}] or [{batch}, {gen_length}], got {tuple(response.shape)}"
            )
        x[:, prompt_length:] = response.to(device)

    full_mask = None
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != prompt.shape:
            raise ValueError(
                f"attention_mask must be a tensor shaped like prompt {tuple(prompt.shape)}, "
                f"got {getattr(attention_mask, 'shape', type(attention_mask).__name__)}"
            )
        valid = attention_mask.to(device) != 0
        if not valid.any(dim=1).all():
            raise ValueError("attention_mask marks every prompt token of a row as padding")
        if (prompt[~valid] == mask_id).any():
            raise ValueError(
                f"padding positions hold mask_id={mask_id}: pad with a token other than the mask "
                "(set tokenizer.pad_token_id != mask_id), or they would be generated into"
            )
        if not valid.all():
            response_valid = torch.ones(batch, gen_length, dtype=torch.bool, device=device)
            full_mask = torch.cat([valid, response_valid], dim=1)
    # Padding holding the mask id is refused above, so any left here is a real token.
    if not prompt_masks and bool((prompt == mask_id).any()):
        raise ValueError(
            f"the prompt holds the mask id {mask_id}; to have the sampler fill positions, put "
            "them in the response canvas (response=, mask_id where to fill), or pass "
            "fill_prompt_masks=True to fill masks inside the prompt as LLaDA's reference does"
        )
    return Canvas(x=x, attention_mask=full_mask, prompt_length=prompt_length)


def first_masked_position(x: torch.Tensor, mask_id: int, default: int) -> int:
    """The first column of ``x`` masked in any row, else ``default`` (reads the host)."""
    masked = (x == mask_id).any(dim=0).nonzero()
    return int(masked[0]) if masked.numel() else default

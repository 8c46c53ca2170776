"""Prompt-length buckets: a canvas left-padded to a multiple of a few tokens, so prompts of
nearby lengths share one shape (and the CUDA graphs captured for it)."""

from __future__ import annotations

import torch

from mosa.text.canvas import Canvas

from .predictor import model_token_id


def bucket_pad_id(model, mask_id: int) -> int:
    """An id to pad buckets with: padding is never attended to, so any id of the vocabulary
    but the mask does; the model's pad or EOS id when it has one."""
    for name in ("pad_token_id", "eos_token_id"):
        value = model_token_id(model, name, None)
        if value is not None and value != mask_id and 0 <= value < model.vocab_size:
            return value
    return 1 if mask_id == 0 else 0


def bucket_canvas(canvas: Canvas, multiple: int, pad_id: int) -> tuple[Canvas, int]:
    """``canvas`` left-padded with ``pad_id`` until its prompt length is a multiple of
    ``multiple``, and the number of columns added.

    Padded keys are never attended to, so the real tokens see what they saw before; LLaDA
    numbers rotary positions by physical index, and since attention scores depend only on
    position differences, the shift changes float rounding, not the mathematics.
    """
    added = -canvas.prompt_length % multiple
    if added == 0:
        return canvas, 0
    batch, length = canvas.x.shape
    device = canvas.x.device
    pad = torch.full((batch, added), pad_id, dtype=canvas.x.dtype, device=device)
    valid = (
        torch.ones(batch, length, dtype=torch.bool, device=device)
        if canvas.attention_mask is None
        else canvas.attention_mask
    )
    padding = torch.zeros(batch, added, dtype=torch.bool, device=device)
    bucketed = Canvas(
        x=torch.cat([pad, canvas.x], dim=1),
        attention_mask=torch.cat([padding, valid], dim=1),
        prompt_length=canvas.prompt_length + added,
    )
    return bucketed, added

"""Checks of a sampler's arguments against the model, run before any work: without them a
float ``steps``, a token id outside the vocabulary or a prompt on another device end in a
generic torch error deep inside the first forward pass."""

from __future__ import annotations

import torch

from mosa.models import DiffusionLM


def _model_device(model) -> torch.device | None:
    if isinstance(model, DiffusionLM):
        return model.device
    parameter = next(model.parameters(), None) if hasattr(model, "parameters") else None
    return None if parameter is None else parameter.device


def _vocabulary_size(model) -> int | None:
    if isinstance(model, DiffusionLM):
        return model.vocab_size
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return getattr(embeddings, "num_embeddings", None)


def check_sampler_arguments(model, prompt, steps) -> None:
    """Raises TypeError for a ``steps`` that is not an int, and ValueError for a ``prompt``
    tensor on another device than ``model`` or holding an id outside the model's vocabulary.

    A ``prompt`` that is not a tensor is left to ``build_canvas``, which names it; the device
    and vocabulary of a model that does not expose them are not checked.
    """
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {steps!r}")
    if not isinstance(prompt, torch.Tensor) or prompt.numel() == 0:
        return
    device = _model_device(model)
    if device is not None and prompt.device != device:
        raise ValueError(
            f"prompt is on {prompt.device} but the model is on {device}; "
            "move it with prompt.to(model.device)"
        )
    vocabulary = _vocabulary_size(model)
    if vocabulary is None or prompt.is_floating_point():
        return
    low, high = int(prompt.min()), int(prompt.max())
    if low < 0 or high >= vocabulary:
        raise ValueError(
            f"prompt holds token id {low if low < 0 else high}, outside the model's vocabulary "
            f"[0, {vocabulary}); encode prompts with the model's own tokenizer"
        )


def check_mask_id(model, mask_id, name: str = "mask_id") -> None:
    """``mask_id`` must be an int id inside the model's vocabulary (when the model says how
    large it is): the canvas is filled with it, and an id outside the vocabulary would end in
    an IndexError in the first forward pass."""
    if isinstance(mask_id, bool) or not isinstance(mask_id, int):
        raise TypeError(f"{name} must be an int token id, got {mask_id!r}")
    vocabulary = _vocabulary_size(model)
    if mask_id < 0 or (vocabulary is not None and mask_id >= vocabulary):
        raise ValueError(
            f"{name}={mask_id} is outside the model's vocabulary [0, {vocabulary}); leave it "
            "unset to use the model's mask_token_id, or give the tokenizer's mask id"
        )

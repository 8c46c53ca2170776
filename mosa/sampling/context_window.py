"""Prompt plus response against the longest sequence the model was built for.

A longer sequence runs without error (rotary positions extend) but past the positions the
model was trained on, so its output is not to be trusted. The samplers therefore refuse it
by default; ``truncate="left"`` keeps the prompt's last tokens instead, with a warning.
"""

from __future__ import annotations

import warnings

import torch

TRUNCATE = (None, "left")
# LLaDA's config names the limit max_sequence_length; Dream's (and most Hugging Face
# configs) max_position_embeddings.
_LIMIT_NAMES = ("max_sequence_length", "max_position_embeddings")


def context_limit(model) -> tuple[str, int] | None:
    """``(name, value)`` of the model config's sequence limit, or None when it names none."""
    config = getattr(model, "config", None)
    for name in _LIMIT_NAMES:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return name, value
    return None


def prompt_room(model, prompt_length: int, gen_length: int, truncate: str | None) -> int:
    """How many prompt tokens the sampler keeps: all ``prompt_length`` when prompt and
    response fit the model's limit, else (``truncate="left"``) as many as fit.

    Raises ValueError for an unknown ``truncate``, for a ``gen_length`` that alone fills the
    limit, and for a prompt that does not fit when ``truncate`` is None.
    """
    if truncate not in TRUNCATE:
        raise ValueError(
            f"truncate must be None (refuse a prompt that does not fit) or 'left' (keep its "
            f"last tokens), got {truncate!r}"
        )
    if isinstance(gen_length, bool) or not isinstance(gen_length, int) or gen_length < 1:
        return prompt_length  # not a length: the sampler names what is wrong with it
    limit = context_limit(model)
    if limit is None or prompt_length + gen_length <= limit[1]:
        return prompt_length
    name, length = limit
    if gen_length >= length:
        raise ValueError(
            f"gen_length ({gen_length}) leaves no room for a prompt within the model's "
            f"{name} ({length}); use a smaller gen_length"
        )
    if truncate is None:
        raise ValueError(
            f"the prompt ({prompt_length} tokens) and gen_length ({gen_length}) need "
            f"{prompt_length + gen_length} positions, more than the model's {name} ({length}); "
            f"shorten the prompt or gen_length, or keep the prompt's last {length - gen_length} "
            "tokens with truncate='left' (mosa sample / eval: --truncate-prompt left)"
        )
    return length - gen_length


def fit_prompt(
    model,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None,
    gen_length: int,
    truncate: str | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(prompt, attention_mask)`` that fit the model with ``gen_length`` more tokens: as
    given, or (``truncate="left"``) their last columns, with a warning. Left padding keeps
    every row's last tokens in those columns. See ``prompt_room`` for the errors."""
    if not isinstance(prompt, torch.Tensor):
        return prompt, attention_mask  # build_canvas names what is wrong with it
    keep = prompt_room(model, prompt.shape[-1], gen_length, truncate)
    if keep == prompt.shape[-1]:
        return prompt, attention_mask
    warnings.warn(
        f"prompt of {prompt.shape[-1]} tokens truncated to its last {keep} (truncate='left'): "
        f"with gen_length {gen_length} that is all the model's context holds",
        stacklevel=4,  # the sampler's caller (past the sampler and torch.no_grad)
    )
    if isinstance(attention_mask, torch.Tensor):
        attention_mask = attention_mask[..., -keep:]
    return prompt[..., -keep:], attention_mask

"""Text in, text out: chat-templated prompts through ``generate`` / ``diffusion_generate``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mosa.models import sampling_family
from mosa.text.prompts import encode_prompts

from .context_window import prompt_room
from .settings import LLADA_REFERENCE

DEFAULT_GEN_LENGTH = LLADA_REFERENCE.gen_length
"""``sample_texts``'s canvas for either family (Dream's ``max_new_tokens``)."""


def check_prompts_fit(
    model, tokenizer, prompts: Sequence[str], *, chat_template: bool, gen_length: int, truncate
) -> None:
    """Before anything is sampled: the longest encoded prompt and ``gen_length`` fit the
    model's sequence limit, or ``truncate='left'`` (``context_window.prompt_room``). The
    samplers check each batch too; this fails a long last prompt before the first batch runs."""
    if not prompts:
        return
    ids, _ = encode_prompts(tokenizer, prompts, chat_template=chat_template, device="cpu")
    prompt_room(model, ids.shape[1], gen_length, truncate)


def sample_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    batch_size: int = 8,
    chat_template: bool = True,
    seed: int = 0,
    progress: bool = False,
    **options,
) -> list[str]:
    """Generate a response for each prompt and decode it (special tokens dropped).

    ``options`` are the sampler's of the model's family (``ModelFamily.sampler_options``):
    LLaDA's ``generate`` arguments, or for a Dream model ``diffusion_generate``'s
    (``gen_length`` is its ``max_new_tokens``). Unset ones keep the
    sampler defaults (``gen_length``: 128 for both). A prompt that does not fit the model with
    ``gen_length`` is refused before anything is sampled unless ``truncate='left'``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    family = sampling_family(model)
    allowed = family.sampler_options
    unknown = sorted(k for k, v in options.items() if v is not None and k not in allowed)
    if unknown:
        raise ValueError(
            f"options {unknown} do not apply to {family.label} models; they take {allowed}"
        )
    chosen = {k: v for k, v in options.items() if v is not None}
    gen_length = chosen.pop("gen_length", DEFAULT_GEN_LENGTH)
    check_prompts_fit(
        model, tokenizer, prompts, chat_template=chat_template, gen_length=gen_length,
        truncate=chosen.get("truncate"),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    responses: list[str] = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="sampling", unit="batch", disable=not progress):
        ids, mask = encode_prompts(
            tokenizer,
            prompts[start : start + batch_size],
            chat_template=chat_template,
            device=model.device,
        )
        out = family.sample(model, ids, mask, gen_length=gen_length, generator=generator, **chosen)
        # The response is the last gen_length columns (truncate='left' may shorten the prompt).
        responses += tokenizer.batch_decode(out[:, -gen_length:], skip_special_tokens=True)
    return responses

"""Text in, text out: chat-templated prompts through ``generate`` / ``diffusion_generate``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mosa.models import DreamModel, adopt_model
from mosa.text.prompts import encode_prompts

from .context_window import prompt_room
from .dream import diffusion_generate
from .llada import generate

LLADA_OPTIONS = (
    "steps", "gen_length", "block_length", "temperature", "cfg_scale", "remasking",
    "logits_eos_inf", "confidence_eos_eot_inf", "threshold", "factor", "cache", "stop_at_eos",
    "cuda_graphs", "truncate",
)  # fmt: skip
DREAM_OPTIONS = (
    "steps", "temperature", "top_p", "top_k", "alg", "alg_temp", "eps", "truncate", "cuda_graphs",
)  # fmt: skip
DEFAULT_GEN_LENGTH = 128


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

    ``options`` are the sampler's: LLaDA's ``generate`` arguments, or for a Dream model
    ``diffusion_generate``'s (``gen_length`` is its ``max_new_tokens``). Unset ones keep the
    sampler defaults (``gen_length``: 128 for both). A prompt that does not fit the model with
    ``gen_length`` is refused before anything is sampled unless ``truncate='left'``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dream = isinstance(adopt_model(model), DreamModel)
    allowed = DREAM_OPTIONS + ("gen_length",) if dream else LLADA_OPTIONS
    unknown = sorted(k for k, v in options.items() if v is not None and k not in allowed)
    if unknown:
        family = "Dream" if dream else "LLaDA"
        raise ValueError(f"options {unknown} do not apply to {family} models; they take {allowed}")
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
        if dream:
            out = diffusion_generate(
                model, ids, mask, max_new_tokens=gen_length, generator=generator, **chosen
            )
        else:
            out = generate(model, ids, mask, gen_length=gen_length, generator=generator, **chosen)
        # The response is the last gen_length columns (truncate='left' may shorten the prompt).
        responses += tokenizer.batch_decode(out[:, -gen_length:], skip_special_tokens=True)
    return responses

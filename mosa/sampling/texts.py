"""Text in, text out: chat-templated prompts through ``generate`` / ``diffusion_generate``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mosa.models import DreamModel
from mosa.text.prompts import encode_prompts

from .dream import diffusion_generate
from .llada import generate

LLADA_OPTIONS = (
    "steps", "gen_length", "block_length", "temperature", "cfg_scale", "remasking",
    "logits_eos_inf", "confidence_eos_eot_inf", "threshold", "factor", "cache", "stop_at_eos",
    "cuda_graphs",
)  # fmt: skip
DREAM_OPTIONS = ("steps", "temperature", "top_p", "top_k", "alg", "alg_temp", "eps")


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
    sampler defaults.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dream = isinstance(model, DreamModel)
    allowed = DREAM_OPTIONS + ("gen_length",) if dream else LLADA_OPTIONS
    unknown = sorted(k for k, v in options.items() if v is not None and k not in allowed)
    if unknown:
        family = "Dream" if dream else "LLaDA"
        raise ValueError(f"options {unknown} do not apply to {family} models; they take {allowed}")
    chosen = {k: v for k, v in options.items() if v is not None}
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
            dream_options = dict(chosen)
            max_new_tokens = dream_options.pop("gen_length", 128)
            out = diffusion_generate(
                model,
                ids,
                mask,
                max_new_tokens=max_new_tokens,
                generator=generator,
                **dream_options,
            )
        else:
            out = generate(model, ids, mask, generator=generator, **chosen)
        responses += tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    return responses

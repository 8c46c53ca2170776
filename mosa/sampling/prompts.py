"""Text in, text out: chat-templated prompts through ``generate`` / ``diffusion_generate``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mosa.models import DreamModel

from .context_window import prompt_room
from .dream import diffusion_generate
from .llada import generate

LLADA_OPTIONS = (
    "steps", "gen_length", "block_length", "temperature", "cfg_scale", "remasking",
    "logits_eos_inf", "confidence_eos_eot_inf", "threshold", "factor", "cache", "stop_at_eos",
    "cuda_graphs", "truncate",
)  # fmt: skip
DREAM_OPTIONS = ("steps", "temperature", "top_p", "top_k", "alg", "alg_temp", "eps", "truncate")
DEFAULT_GEN_LENGTH = 128


# Files that hold a tokenizer's vocabulary (fast tokenizers, sentencepiece, BPE, WordPiece).
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def load_tokenizer(folder):
    """The checkpoint folder's tokenizer (``AutoTokenizer``), read from that folder only.

    Never runs code from the folder (``trust_remote_code=False``: a ``tokenizer_config.json``
    whose ``auto_map`` names custom tokenizer code is refused) and never asks a model hub
    (``local_files_only=True``). Raises ValueError for a folder without tokenizer files. The
    warning transformers prints because it does not know the model types of ``config.json``
    is silenced.
    """
    from transformers import AutoTokenizer
    from transformers.utils import logging

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; give a local checkpoint folder")
    if not any((folder / name).is_file() for name in VOCABULARY_FILES):
        raise ValueError(
            f"no tokenizer files in {folder} (none of {', '.join(VOCABULARY_FILES)}); "
            "copy the model's tokenizer files into it"
        )
    settings = folder / "tokenizer_config.json"
    if settings.is_file() and "auto_map" in json.loads(settings.read_text(encoding="utf-8")):
        raise ValueError(
            f"{settings} names custom tokenizer code (auto_map), and mosa never runs code from "
            "a model folder; remove auto_map and set tokenizer_class to a transformers class "
            "(e.g. PreTrainedTokenizerFast with tokenizer.json)"
        )
    previous = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    finally:
        logging.set_verbosity(previous)


def encode_prompts(tokenizer, prompts: Sequence[str], *, chat_template: bool, device) -> tuple:
    """Token ids ``[B, P]`` (left-padded) and their attention mask."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            for p in prompts
        ]
    else:
        texts = list(prompts)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)


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
    dream = isinstance(model, DreamModel)
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

"""Tokenizer loading and chat-templated prompt encoding, for sampling, alignment and evaluation."""

from __future__ import annotations

from collections.abc import Sequence


def load_tokenizer(folder):
    """The checkpoint folder's tokenizer (``AutoTokenizer``), without the warning transformers
    prints because it does not know the model types of ``config.json``."""
    from transformers import AutoTokenizer
    from transformers.utils import logging

    previous = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(folder)
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

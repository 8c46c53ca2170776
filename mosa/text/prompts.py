"""Tokenizer loading and chat-templated prompt encoding, for sampling, alignment and evaluation."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

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
    """Token ids ``[B, P]`` (left-padded) and their attention mask. A chat template that does
    not parse or raises (the model folder's, untrusted) is a ValueError naming the folder."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        from jinja2 import TemplateError

        try:
            texts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
                )
                for p in prompts
            ]
        except TemplateError as err:
            raise ValueError(
                f"the chat template of {tokenizer.name_or_path} fails ({type(err).__name__}: "
                f"{err}); fix chat_template.jinja (or chat_template in tokenizer_config.json), "
                "or sample without it (--no-chat-template, chat_template=False)"
            ) from None
    else:
        texts = list(prompts)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)


def left_pad(rows, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows of different lengths (lists or 1-D tensors) left-padded to the longest:
    ``(ids, attention_mask)``, both int64 ``[B, P]``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.as_tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask

"""Tokenizer loading and chat-templated prompt encoding, for sampling, alignment and evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

# Files that hold a tokenizer's vocabulary (fast tokenizers, sentencepiece, BPE, WordPiece).
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
# The JSON files of a folder that AutoTokenizer parses: each must hold a JSON object, or
# transformers fails with a message that names none of them.
TOKENIZER_JSON_FILES = (
    "config.json", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json",
)  # fmt: skip


def load_tokenizer(folder):
    """The checkpoint folder's tokenizer (``AutoTokenizer``), read from that folder only.

    Never runs code from the folder (``trust_remote_code=False``: a ``tokenizer_config.json``
    whose ``auto_map`` names custom tokenizer code is refused) and never asks a model hub
    (``local_files_only=True``). Raises ValueError for a folder without tokenizer files. The
    warning transformers prints because it does not know the model types of ``config.json``
    is silenced. A JSON file of the folder that does not hold a JSON object is a ValueError
    naming it.
    """
    from transformers import AutoTokenizer
    from transformers.utils import logging

    from mosa.models.config import read_json_object

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; give a local checkpoint folder")
    if not any((folder / name).is_file() for name in VOCABULARY_FILES):
        raise ValueError(
            f"no tokenizer files in {folder} (none of {', '.join(VOCABULARY_FILES)}); "
            "copy the model's tokenizer files into it"
        )
    parsed = {
        name: read_json_object(folder / name)
        for name in TOKENIZER_JSON_FILES
        if (folder / name).is_file()
    }
    settings = folder / "tokenizer_config.json"
    if "auto_map" in parsed.get(settings.name, {}):
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


class MaskInPromptError(ValueError):
    """A prompt whose tokens hold the mask id. ``argument`` names the list of prompts and
    ``index`` the first such prompt in it (0-based), so a command can name its file and row;
    ``detail`` says what is wrong and the fix."""

    def __init__(self, argument: str, index: int, token: str | None, mask_id: int):
        self.argument, self.index = argument, index
        self.detail = (
            f"holds the mask token {token!r} (id {mask_id}), which marks the positions to "
            "generate; remove it from the prompt"
        )
        super().__init__(f"{argument}[{index}] {self.detail}")


def check_no_mask_in_prompts(
    tokenizer, prompts: Sequence[str], mask_id: int, *, chat_template: bool, argument: str
) -> None:
    """Raises ``MaskInPromptError`` for the first of ``prompts`` whose encoding (as
    ``encode_prompts`` gives it) holds ``mask_id``: checked before any work on them, where the
    canvas would refuse it only when the prompt's batch comes up."""
    if not prompts:
        return
    ids, mask = encode_prompts(tokenizer, prompts, chat_template=chat_template, device="cpu")
    held = ((ids == mask_id) & (mask != 0)).any(dim=1).nonzero()
    if held.numel():
        token = tokenizer.convert_ids_to_tokens(mask_id)
        raise MaskInPromptError(argument, int(held[0]), token, mask_id)

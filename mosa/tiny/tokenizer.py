"""The tiny model's word-level tokenizer, in Hugging Face ``tokenizers`` format.

Words and punctuation are tokens (``Whitespace`` pre-tokenizer, lowercased); the special
tokens are the padding, unknown, EOS, end-of-turn, mask and chat-role tokens. The chat
template renders ``<|user|> text <|eot|> <|assistant|>``; a response is its words followed
by EOS padding.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

PAD = "<|pad|>"
UNK = "<|unk|>"
EOS = "<|endoftext|>"
EOT = "<|eot|>"
MASK = "<|mdm_mask|>"
ROLES = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, UNK, EOS, EOT, MASK, *ROLES)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|eot|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(texts: Iterable[str]):
    """A ``PreTrainedTokenizerFast`` whose vocabulary is the special tokens, then every word of
    ``texts`` in sorted order (so the ids depend only on the set of words)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    pre_tokenizer = pre_tokenizers.Whitespace()
    words = {w for text in texts for w, _ in pre_tokenizer.pre_tokenize_str(text.lower())}
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted(words - set(vocab)):
        vocab[word] = len(vocab)
    backend = Tokenizer(WordLevel(vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizer
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=EOS,
        mask_token=MASK,
        additional_special_tokens=[EOT, *ROLES],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """Writes ``tokenizer.json`` and ``tokenizer_config.json`` (with the chat template)."""
    tokenizer.save_pretrained(str(folder))

"""``DecoderStackLM``: the Hugging Face decoder layout Dream, LLaDA2 and LLaDA-MoE share."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .base import DiffusionLM
from .layers import RMSNorm


class DecoderStackLM(DiffusionLM):
    """A ``DiffusionLM`` laid out as ``model.<embedding_name>``, ``model.layers``,
    ``model.norm`` and, unless the config ties them to the embedding
    (``tie_word_embeddings``), the head ``lm_head``."""

    embedding_name: ClassVar[str] = "embed_tokens"

    def __init__(self, config, model: nn.Module):
        super().__init__(config)
        self.model = model
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return getattr(self.model, self.embedding_name)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    @property
    def final_norm(self) -> RMSNorm:
        return self.model.norm

    @property
    def lm_head_weight(self) -> torch.Tensor:
        if self.config.tie_word_embeddings:
            return self.get_input_embeddings().weight
        return self.lm_head.weight

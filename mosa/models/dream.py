"""Dream (``DreamModel`` checkpoints: Dream-v0-Base/Instruct-7B), a bidirectional Qwen2.

Parameter names are the checkpoint's: ``model.embed_tokens``, ``model.layers.{i}.self_attn.
{q,k,v,o}_proj`` (q/k/v with bias), ``model.layers.{i}.mlp.{gate,up,down}_proj``,
``model.layers.{i}.{input_layernorm, post_attention_layernorm}``, ``model.norm``, ``lm_head``.
Grouped-query attention; RoPE tables in fp32, applied in the model dtype, as Qwen2 does.

Two conventions of Dream's published generation code hold here: logits are shifted (token i
is predicted from hidden state i - 1), and under padding the rotary position of a token is
the number of real tokens before it (``cumsum(valid) - 1``; padding slots get 1).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import DreamConfig
from .decoder_stack import DecoderStackLM
from .layers import AttentionInputs, RMSNorm, logical_positions, self_attention, swiglu


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.heads, self.kv_heads = config.num_attention_heads, config.kv_heads
        d, kv_width = config.hidden_size, config.kv_heads * config.head_dim
        self.q_proj = nn.Linear(d, d, bias=True)
        self.k_proj = nn.Linear(d, kv_width, bias=True)
        self.v_proj = nn.Linear(d, kv_width, bias=True)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, h: torch.Tensor, inputs: AttentionInputs, layer: int) -> torch.Tensor:
        att = self_attention(
            self.q_proj(h), self.k_proj(h), self.v_proj(h), inputs, layer, self.heads, self.kv_heads
        )
        return self.o_proj(att)


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        d, hidden = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(h), self.up_proj(h)))


class DreamDecoderLayer(nn.Module):
    """``x + self_attn(input_layernorm(x))``, then ``x + mlp(post_attention_layernorm(x))``."""

    def __init__(self, config: DreamConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.self_attn = DreamAttention(config)
        self.mlp = DreamMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), inputs, self.layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class DreamBackbone(nn.Module):
    """The checkpoint's ``model``: embedding, decoder layers, final norm."""

    def __init__(self, config: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(
            DreamDecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DreamModel(DecoderStackLM):
    """Dream as a plain ``nn.Module``; see ``DiffusionLM.forward``."""

    logits_shift = 1
    rope_in_fp32 = False
    lora_target_modules = r"model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"

    def __init__(self, config: DreamConfig):
        if not isinstance(config, DreamConfig):
            raise TypeError(f"DreamModel needs a DreamConfig, got {type(config).__name__}")
        super().__init__(config, DreamBackbone(config))

    def rotary_positions(self, key_valid: torch.Tensor | None, length: int) -> torch.Tensor:
        """``cumsum(valid) - 1`` per row (padding slots 1), the published ``tok_idx``."""
        return logical_positions(key_valid, length, self.device)

"""LLaDA2.x MoE (``LLaDA2MoeModelLM`` checkpoints: LLaDA2.0-mini/-flash, LLaDA2.1), block diffusion.

Parameter names are the checkpoint's: ``model.word_embeddings``, ``model.layers.{i}.attention.
{query_key_value, query_layernorm, key_layernorm, dense}``, ``model.layers.{i}.{input_layernorm,
post_attention_layernorm}``, ``model.layers.{i}.mlp`` (the MoE block from layer
``first_k_dense_replace`` on: ``gate.weight``, ``gate.expert_bias``, ``experts.{e}.{gate,up,
down}_proj``, ``shared_experts.*``; before it a dense ``{gate,up,down}_proj``), ``model.norm``
and, unless ``tie_word_embeddings``, ``lm_head``. Each layer is the published
``LLaDA2MoeDecoderLayer``::

    q, k, v = split(query_key_value(h)),                        h = input_layernorm(x)
    x = x + dense(attention(rope(q_norm(q)), rope(k_norm(k)), v))
    x = x + mlp(post_attention_layernorm(x))

with per-head RMSNorm of q and k before a partial RoPE (the first ``head_dim *
partial_rotary_factor`` dims of each head rotate, tables in fp32 applied in the model dtype).
Logits are not shifted.

The published ``generate`` decodes under a block-causal mask (bidirectional inside a block of
``block_length`` tokens, causal across blocks, blocks counted from position 0); here that is
``model(x, attention_mask, block_length=bl)``, and ``block_length=None`` is the bidirectional
attention the published forward runs without a mask. Under padding the rotary position of a
token is the number of real tokens before it (``cumsum(valid) - 1``), so a left-padded row is
rotated as the row alone.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import LLaDA2Config
from .decoder_stack import DecoderStackLM
from .layers import AttentionInputs, RMSNorm, logical_positions, self_attention
from .moe import ExpertMLP, LLaDA2SparseMoe


class LLaDA2Attention(nn.Module):
    """Fused q/k/v projection, per-head QK-norm, partial RoPE, output projection ``dense``."""

    def __init__(self, config: LLaDA2Config):
        super().__init__()
        self.heads, self.kv_heads = config.num_attention_heads, config.kv_heads
        d, head_dim = config.hidden_size, config.head_dim
        self.widths = (self.heads * head_dim, self.kv_heads * head_dim, self.kv_heads * head_dim)
        self.query_key_value = nn.Linear(d, sum(self.widths), bias=config.use_qkv_bias)
        if config.use_qk_norm:
            self.query_layernorm = RMSNorm(head_dim, config.rms_norm_eps)
            self.key_layernorm = RMSNorm(head_dim, config.rms_norm_eps)
        self.dense = nn.Linear(self.heads * head_dim, d, bias=config.use_bias)

    def forward(self, h: torch.Tensor, inputs: AttentionInputs, layer: int) -> torch.Tensor:
        # The published split views the output as [B, L, Hq + 2 Hkv, D]: q heads, then k, then v.
        q, k, v = self.query_key_value(h).split(self.widths, dim=-1)
        norms = (getattr(self, "query_layernorm", None), getattr(self, "key_layernorm", None))
        att = self_attention(
            q, k, v, inputs, layer, self.heads, self.kv_heads, q_norm=norms[0], k_norm=norms[1]
        )
        return self.dense(att)


class LLaDA2DecoderLayer(nn.Module):
    """``x + attention(input_layernorm(x))``, then ``x + mlp(post_attention_layernorm(x))``."""

    def __init__(self, config: LLaDA2Config, layer: int):
        super().__init__()
        self.layer = layer
        d = config.hidden_size
        self.attention = LLaDA2Attention(config)
        if config.is_moe_layer(layer):
            self.mlp = LLaDA2SparseMoe(
                d,
                config.moe_intermediate_size,
                config.num_experts,
                config.num_experts_per_tok,
                config.n_group,
                config.topk_group,
                config.routed_scaling_factor,
                config.num_shared_experts,
            )
        else:
            self.mlp = ExpertMLP(d, config.intermediate_size)
        self.input_layernorm = RMSNorm(d, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(d, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        x = x + self.attention(self.input_layernorm(x), inputs, self.layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class LLaDA2Backbone(nn.Module):
    """The checkpoint's ``model``: embedding, decoder layers, final norm."""

    def __init__(self, config: LLaDA2Config):
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, config.pad_token_id
        )
        self.layers = nn.ModuleList(
            LLaDA2DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LLaDA2Model(DecoderStackLM):
    """LLaDA2.x as a plain ``nn.Module``; see ``DiffusionLM.forward`` (``block_length`` for its
    block-causal decoding)."""

    embedding_name = "word_embeddings"
    logits_shift = 0
    rope_in_fp32 = False
    # Attention, the dense layers' MLPs and the shared experts; not the router or the routed
    # experts.
    lora_target_modules = (
        r"model\.layers\.\d+\.(attention\.(query_key_value|dense)"
        r"|mlp\.(shared_experts\.)?(gate_proj|up_proj|down_proj))"
    )
    lora_expert_modules = r"model\.layers\.\d+\.mlp\.experts\.\d+\.(gate_proj|up_proj|down_proj)"

    def __init__(self, config: LLaDA2Config):
        if not isinstance(config, LLaDA2Config):
            raise TypeError(f"LLaDA2Model needs an LLaDA2Config, got {type(config).__name__}")
        super().__init__(config, LLaDA2Backbone(config))

    def rotary_positions(self, key_valid: torch.Tensor | None, length: int) -> torch.Tensor:
        """``cumsum(valid) - 1`` per row (padding slots 1): a left-padded row as the row alone."""
        return logical_positions(key_valid, length, self.device)

"""LLaDA-MoE (``LLaDAMoEModelLM`` checkpoints: LLaDA-MoE-7B-A1B-Base/Instruct), bidirectional.

Parameter names are the checkpoint's: ``model.embed_tokens``, ``model.layers.{i}.self_attn.
{q,k,v,o}_proj`` (bias when ``attention_bias``), ``model.layers.{i}.self_attn.{q_norm,
k_norm}`` (``qk_layernorm``), ``model.layers.{i}.mlp`` (the MoE block where
``moe_layer_freq[i]`` is 1: ``gate.weight``, ``experts.{e}.{gate,up,down}_proj`` and, with
``moe_router_enable_expert_bias``, ``expert_bias``; elsewhere a dense ``{gate,up,down}_proj``),
``model.layers.{i}.shared_expert`` (MoE layers, when ``shared_expert_intermediate_size`` is
set), ``model.layers.{i}.{input_layernorm, post_attention_layernorm}``, ``model.norm`` and,
unless ``tie_word_embeddings``, ``lm_head``. Each layer is the published
``LLaDAMoEDecoderLayer``::

    x = x + o_proj(attention(rope(q_norm(q_proj(h))), rope(k_norm(k_proj(h))), v_proj(h)))
    x = x + mlp(h') + shared_expert(h'),              h = input_layernorm(x), h' = post_...(x)

with per-head RMSNorm of q and k, ``clip_qkv`` clamping after it, RoPE (partial when
``partial_rotary_factor < 1``; tables in fp32 applied in the model dtype) at the physical
position, as the published code numbers them; padding is masked as keys. Logits are not
shifted. It decodes with LLaDA's ``generate``.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import LLaDAMoEConfig
from .decoder_stack import DecoderStackLM
from .layers import AttentionInputs, RMSNorm, self_attention
from .moe import ExpertMLP, LLaDAMoESparseMoe


class LLaDAMoEAttention(nn.Module):
    """q/k/v/o projections with optional per-head QK-norm and q/k/v clipping."""

    def __init__(self, config: LLaDAMoEConfig):
        super().__init__()
        self.heads, self.kv_heads = config.num_attention_heads, config.kv_heads
        self.clip = config.clip_qkv
        d, kv_width, bias = (
            config.hidden_size,
            config.kv_heads * config.head_dim,
            config.attention_bias,
        )
        self.q_proj = nn.Linear(d, d, bias=bias)
        self.k_proj = nn.Linear(d, kv_width, bias=bias)
        self.v_proj = nn.Linear(d, kv_width, bias=bias)
        self.o_proj = nn.Linear(d, d, bias=bias)
        if config.qk_layernorm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)

    def forward(self, h: torch.Tensor, inputs: AttentionInputs, layer: int) -> torch.Tensor:
        att = self_attention(
            self.q_proj(h), self.k_proj(h), self.v_proj(h), inputs, layer, self.heads,
            self.kv_heads, q_norm=getattr(self, "q_norm", None),
            k_norm=getattr(self, "k_norm", None), clip=self.clip,
        )  # fmt: skip
        return self.o_proj(att)


class LLaDAMoEDecoderLayer(nn.Module):
    """``x + self_attn(input_layernorm(x))``, then ``x + mlp(h) (+ shared_expert(h))`` with
    ``h = post_attention_layernorm(x)``."""

    def __init__(self, config: LLaDAMoEConfig, layer: int):
        super().__init__()
        self.layer = layer
        d = config.hidden_size
        self.self_attn = LLaDAMoEAttention(config)
        moe = config.is_moe_layer(layer)
        if moe:
            self.mlp = LLaDAMoESparseMoe(
                d,
                config.expert_intermediate_size,
                config.num_experts,
                config.num_experts_per_tok,
                bool(config.moe_router_enable_expert_bias),
            )
        else:
            self.mlp = ExpertMLP(d, config.dense_intermediate_size)
        self.shared_expert = None
        if moe and config.shared_expert_intermediate_size is not None:
            self.shared_expert = ExpertMLP(d, config.shared_expert_intermediate_size)
        self.input_layernorm = RMSNorm(d, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(d, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), inputs, self.layer)
        h = self.post_attention_layernorm(x)
        out = self.mlp(h)
        if self.shared_expert is not None:
            out = out + self.shared_expert(h)
        return x + out


class LLaDAMoEBackbone(nn.Module):
    """The checkpoint's ``model``: embedding, decoder layers, final norm."""

    def __init__(self, config: LLaDAMoEConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(
            LLaDAMoEDecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LLaDAMoEModel(DecoderStackLM):
    """LLaDA-MoE as a plain ``nn.Module``; see ``DiffusionLM.forward``."""

    logits_shift = 0
    rope_in_fp32 = False
    # Attention, dense MLPs and the shared expert; not the router or the routed experts.
    lora_target_modules = (
        r"model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)"
        r"|(mlp|shared_expert)\.(gate_proj|up_proj|down_proj))"
    )
    lora_expert_modules = r"model\.layers\.\d+\.mlp\.experts\.\d+\.(gate_proj|up_proj|down_proj)"

    def __init__(self, config: LLaDAMoEConfig):
        if not isinstance(config, LLaDAMoEConfig):
            raise TypeError(f"LLaDAMoEModel needs an LLaDAMoEConfig, got {type(config).__name__}")
        super().__init__(config, LLaDAMoEBackbone(config))

"""LLaDA (``LLaDAModelLM`` checkpoints: LLaDA-8B-Base/Instruct, LLaDA-1.5).

Parameter names are the checkpoint's: ``model.transformer.wte``, ``...blocks.{i}.{attn_norm,
ff_norm, q_proj, k_proj, v_proj, attn_out, ff_proj, up_proj, ff_out}``, ``...ln_f`` and, unless
``weight_tying``, the head ``model.transformer.ff_out``. Each block is the published
``LLaDALlamaBlock``::

    x = x + attn_out(attention(rope(q_proj(h)), rope(k_proj(h)), v_proj(h))),  h = attn_norm(x)
    x = x + ff_out(silu(ff_proj(h)) * up_proj(h)),                            h = ff_norm(x)

with RoPE in fp32 at the physical position of every token (the published code has no
position ids; under left padding the offset cancels in the attention scores).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import DiffusionLM
from .config import LLaDAConfig
from .layers import AttentionInputs, RMSNorm, self_attention, swiglu


class LLaDABlock(nn.Module):
    """One transformer block (the published ``LLaDALlamaBlock``)."""

    def __init__(self, config: LLaDAConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.heads, self.kv_heads = config.n_heads, config.kv_heads
        d, kv_width, hidden = config.d_model, config.kv_heads * config.head_dim, config.mlp_hidden
        self.attn_norm = RMSNorm(d, config.rms_norm_eps, bias=config.norm_bias)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps, bias=config.norm_bias)
        self.q_proj = nn.Linear(d, d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, kv_width, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, kv_width, bias=config.qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=config.include_bias)
        self.ff_proj = nn.Linear(d, hidden, bias=config.include_bias)
        self.up_proj = nn.Linear(d, hidden, bias=config.include_bias)
        self.ff_out = nn.Linear(hidden, d, bias=config.include_bias)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        h = self.attn_norm(x)
        att = self_attention(
            self.q_proj(h),
            self.k_proj(h),
            self.v_proj(h),
            inputs,
            self.layer,
            self.heads,
            self.kv_heads,
        )
        x = x + self.attn_out(att)
        h = self.ff_norm(x)
        return x + self.ff_out(swiglu(self.ff_proj(h), self.up_proj(h)))


class LLaDABackbone(nn.Module):
    """The checkpoint's ``model``: holds the ``transformer`` module dict."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        modules: dict[str, nn.Module] = {
            "wte": nn.Embedding(config.logits_size, config.d_model),
            "blocks": nn.ModuleList(LLaDABlock(config, i) for i in range(config.n_layers)),
            "ln_f": RMSNorm(config.d_model, config.rms_norm_eps, bias=config.norm_bias),
        }
        if not config.weight_tying:
            modules["ff_out"] = nn.Linear(
                config.d_model, config.logits_size, bias=config.include_bias
            )
        self.transformer = nn.ModuleDict(modules)


class LLaDAModel(DiffusionLM):
    """LLaDA as a plain ``nn.Module``; see ``DiffusionLM.forward``."""

    logits_shift = 0
    rope_in_fp32 = True
    lora_target_modules = (
        r"model\.transformer\.blocks\.\d+\.(q_proj|k_proj|v_proj|attn_out|ff_proj|up_proj|ff_out)"
    )

    def __init__(self, config: LLaDAConfig):
        if not isinstance(config, LLaDAConfig):
            raise TypeError(f"LLaDAModel needs an LLaDAConfig, got {type(config).__name__}")
        super().__init__(config)
        self.model = LLaDABackbone(config)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.transformer.blocks

    @property
    def final_norm(self) -> RMSNorm:
        return self.model.transformer.ln_f

    @property
    def lm_head_weight(self) -> torch.Tensor:
        if self.config.weight_tying:
            return self.model.transformer.wte.weight
        return self.model.transformer.ff_out.weight

    @property
    def lm_head_bias(self) -> torch.Tensor | None:
        return None if self.config.weight_tying else self.model.transformer.ff_out.bias

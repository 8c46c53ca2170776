"""Stand-ins for the published remote-code models, as ``AutoModel.from_pretrained(...,
trust_remote_code=True)`` returns them: LLaDA's ``LLaDAModelLM`` and Dream's ``DreamModel``.

They have the published module names, config fields (``model_type``, ``architectures``) and
forward math, written plainly from torch primitives and independent of ``mosa.models``: the
``from_hf`` tests check mosa's fused path against their ``.logits``. (The published modeling
files cannot be committed here.) Their forward takes ``input_ids`` and an optional padding
mask and returns an object with ``.logits``, unshifted as the published models return them.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"


class DreamConfig(PretrainedConfig):
    model_type = "Dream"


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return _rms_norm(x, self.weight, self.eps)


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Half-split rotation of ``x`` ``[B, H, L, D]`` at ``positions`` ``[B or 1, L]``, in fp32."""
    dim = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    first, second = x.float().chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return (x.float() * angles.cos() + rotated * angles.sin()).to(x.dtype)


def _attention(q, k, v, heads, kv_heads, theta, positions, key_valid):
    """Bidirectional attention of ``[B, L, H*D]`` projections, keys masked by ``key_valid``."""
    batch, length, _ = q.shape
    q = q.view(batch, length, heads, -1).transpose(1, 2)
    k = k.view(batch, length, kv_heads, -1).transpose(1, 2)
    v = v.view(batch, length, kv_heads, -1).transpose(1, 2)
    q, k = _rope(q, positions, theta), _rope(k, positions, theta)
    k = k.repeat_interleave(heads // kv_heads, dim=1)
    v = v.repeat_interleave(heads // kv_heads, dim=1)
    mask = None if key_valid is None else key_valid[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(batch, length, -1)


def _block(x, attn_norm, attention, ff_norm, mlp, heads, positions, key_valid):
    """A pre-norm block: ``x + out(attention(q, k, v))``, then ``x + down(silu(gate) * up)``."""
    q, k, v, out = attention
    gate, up, down = mlp
    h = attn_norm(x)
    x = x + out(_attention(q(h), k(h), v(h), *heads, positions, key_valid))
    h = ff_norm(x)
    return x + down(F.silu(gate(h)) * up(h))


class LLaDALlamaBlock(nn.Module):
    def __init__(self, c: LLaDAConfig):
        super().__init__()
        self.c = c
        d, kv = c.d_model, c.n_kv_heads * (c.d_model // c.n_heads)
        self.attn_norm, self.ff_norm = RMSNorm(d, c.rms_norm_eps), RMSNorm(d, c.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv, bias=False)
        self.v_proj = nn.Linear(d, kv, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_proj = nn.Linear(d, c.mlp_hidden_size, bias=False)
        self.up_proj = nn.Linear(d, c.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(c.mlp_hidden_size, d, bias=False)

    def forward(self, x, positions, key_valid):
        c = self.c
        attention = (self.q_proj, self.k_proj, self.v_proj, self.attn_out)
        mlp = (self.ff_proj, self.up_proj, self.ff_out)
        heads = (c.n_heads, c.n_kv_heads, c.rope_theta)
        return _block(x, self.attn_norm, attention, self.ff_norm, mlp, heads, positions, key_valid)


class LLaDAModel(nn.Module):
    def __init__(self, c: LLaDAConfig):
        super().__init__()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(c.embedding_size, c.d_model),
                "blocks": nn.ModuleList(LLaDALlamaBlock(c) for _ in range(c.n_layers)),
                "ln_f": RMSNorm(c.d_model, c.rms_norm_eps),
                "ff_out": nn.Linear(c.d_model, c.embedding_size, bias=False),
            }
        )


class LLaDAModelLM(nn.Module):
    """``model.transformer.{wte, blocks.{i}.*, ln_f, ff_out}``; RoPE at the physical index."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.config = config
        self.model = LLaDAModel(config)

    def forward(self, input_ids, attention_mask=None):
        t = self.model.transformer
        x = t["wte"](input_ids)
        positions = torch.arange(input_ids.shape[1])[None]
        key_valid = None if attention_mask is None else attention_mask.bool()
        for block in t["blocks"]:
            x = block(x, positions, key_valid)
        return SimpleNamespace(logits=t["ff_out"](t["ln_f"](x)))


class DreamAttention(nn.Module):
    def __init__(self, c: DreamConfig):
        super().__init__()
        d, kv = c.hidden_size, c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
        self.q_proj = nn.Linear(d, d, bias=True)
        self.k_proj = nn.Linear(d, kv, bias=True)
        self.v_proj = nn.Linear(d, kv, bias=True)
        self.o_proj = nn.Linear(d, d, bias=False)


class DreamMLP(nn.Module):
    def __init__(self, c: DreamConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)


class DreamDecoderLayer(nn.Module):
    def __init__(self, c: DreamConfig):
        super().__init__()
        self.c = c
        self.self_attn, self.mlp = DreamAttention(c), DreamMLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, positions, key_valid):
        c, a, m = self.c, self.self_attn, self.mlp
        attention = (a.q_proj, a.k_proj, a.v_proj, a.o_proj)
        mlp = (m.gate_proj, m.up_proj, m.down_proj)
        heads = (c.num_attention_heads, c.num_key_value_heads, c.rope_theta)
        norms = (self.input_layernorm, self.post_attention_layernorm)
        return _block(x, norms[0], attention, norms[1], mlp, heads, positions, key_valid)


class DreamBaseModel(nn.Module):
    def __init__(self, c: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DreamDecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class DreamModel(nn.Module):
    """Qwen2 names with bidirectional attention; positions ``cumsum(valid) - 1`` under padding."""

    def __init__(self, config: DreamConfig):
        super().__init__()
        self.config = config
        self.model = DreamBaseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids, attention_mask=None):
        x = self.model.embed_tokens(input_ids)
        if attention_mask is None:
            key_valid, positions = None, torch.arange(input_ids.shape[1])[None]
        else:
            key_valid = attention_mask.bool()
            positions = (key_valid.long().cumsum(-1) - 1).masked_fill(~key_valid, 1)
        for layer in self.model.layers:
            x = layer(x, positions, key_valid)
        return SimpleNamespace(logits=self.lm_head(self.model.norm(x)))


def standin(family: str, config: dict, seed: int = 0) -> nn.Module:
    """A stand-in of ``family`` built from a ``config.json`` dict, with random weights
    scaled as ``tiny_checkpoints.random_weights`` scales them, in eval mode."""
    cls, config_cls = {"llada": (LLaDAModelLM, LLaDAConfig), "dream": (DreamModel, DreamConfig)}[
        family
    ]
    # transformers 5 warns on the published Dream config's "rope_scaling": null.
    model = cls(config_cls(**{k: v for k, v in config.items() if k != "rope_scaling"}))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name or name.endswith("ln_f.weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.2 * noise)
            else:
                param.copy_(noise / param.shape[-1] ** 0.5)
    return model.eval()

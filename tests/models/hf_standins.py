"""Stand-ins for the published remote-code models, as ``AutoModel.from_pretrained(...,
trust_remote_code=True)`` returns them: LLaDA's ``LLaDAModelLM``, Dream's ``DreamModel``,
LLaDA2.x's ``LLaDA2MoeModelLM`` and LLaDA-MoE's ``LLaDAMoEModelLM``.

They have the published module names (the LLaDA2 router keeps its weight as a bare parameter
beside its ``expert_bias`` buffer, as published), config fields (``model_type``,
``architectures``) and forward math, written plainly from torch primitives and independent of
``mosa.models``: the ``from_hf`` tests check mosa's fused path against their ``.logits``. (The
published modeling files cannot be committed here.) Their forward takes ``input_ids`` and an
optional padding mask and returns an object with ``.logits``, unshifted as the published
models return them. LLaDA2's takes the padding mask the way its ``generate`` feeds the
published forward (padded keys masked, positions ``cumsum(mask) - 1``), and ``block_length``
for the block-diffusion mask ``generate`` builds.
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


def _rope(
    x: torch.Tensor, positions: torch.Tensor, theta: float, factor: float = 1.0
) -> torch.Tensor:
    """Half-split rotation of ``x`` ``[B, H, L, D]`` at ``positions`` ``[B or 1, L]``, in fp32;
    with ``factor < 1`` only the first ``int(D * factor)`` dims rotate (partial RoPE)."""
    dim = int(x.shape[-1] * factor)
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    part, rest = x[..., :dim].float(), x[..., dim:]
    first, second = part.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return torch.cat([(part * angles.cos() + rotated * angles.sin()).to(x.dtype), rest], dim=-1)


def _attention(q, k, v, heads, kv_heads, theta, positions, key_valid, extras=None):
    """Attention of ``[B, L, H*D]`` projections, keys masked by ``key_valid``. ``extras``:
    ``q_norm`` / ``k_norm`` over each head, ``clip`` of q, k, v, ``rotary`` (the rotated
    fraction of a head) and ``allowed`` (a ``[L, L]`` bool mask of the keys each query sees)."""
    extras = extras or {}
    batch, length, _ = q.shape
    q = q.view(batch, length, heads, -1)
    k = k.view(batch, length, kv_heads, -1)
    v = v.view(batch, length, kv_heads, -1)
    if "q_norm" in extras:
        q, k = extras["q_norm"](q), extras["k_norm"](k)
    if extras.get("clip") is not None:
        q, k, v = (t.clamp(-extras["clip"], extras["clip"]) for t in (q, k, v))
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    factor = extras.get("rotary", 1.0)
    q, k = _rope(q, positions, theta, factor), _rope(k, positions, theta, factor)
    k = k.repeat_interleave(heads // kv_heads, dim=1)
    v = v.repeat_interleave(heads // kv_heads, dim=1)
    mask = None if key_valid is None else key_valid[:, None, None, :]
    if "allowed" in extras:
        allowed = extras["allowed"][None, None]
        mask = allowed if mask is None else mask & allowed
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


class LLaDA2MoeConfig(PretrainedConfig):
    model_type = "llada2_moe"


class LLaDAMoEConfig(PretrainedConfig):
    model_type = "llada"  # as LLaDA-MoE's checkpoints say


class SwiGLU(nn.Module):
    """``down_proj(silu(gate_proj(x)) * up_proj(x))``: the dense MLPs and the experts."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _mix_experts(x, experts, expert_ids, weights):
    """``sum_k weights[:, k] * experts[expert_ids[:, k]](x)`` token by token, in fp32."""
    out = torch.zeros(x.shape, dtype=torch.float32)
    for token in range(x.shape[0]):
        for e, w in zip(expert_ids[token].tolist(), weights[token], strict=True):
            out[token] += w.float() * experts[e](x[token : token + 1])[0].float()
    return out.to(x.dtype)


class LLaDA2MoeGate(nn.Module):
    """Sigmoid scores; the selection adds ``expert_bias`` and keeps the ``topk_group`` groups
    whose two best biased scores sum highest; the weights are the chosen unbiased scores over
    their sum (+1e-20), times ``routed_scaling_factor``."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.weight = nn.Parameter(torch.empty(c.num_experts, c.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(c.num_experts))

    def forward(self, x):
        c = self.c
        scores = torch.sigmoid(x.float() @ self.weight.float().T)
        biased = scores + self.expert_bias
        groups = biased.view(x.shape[0], c.n_group, -1)
        best = groups.topk(2, dim=-1).values.sum(-1).topk(c.topk_group, dim=-1).indices
        keep = torch.zeros(groups.shape[:2], dtype=torch.bool).scatter(1, best, True)
        biased = biased.masked_fill(~keep.repeat_interleave(groups.shape[2], dim=1), -torch.inf)
        expert_ids = biased.topk(c.num_experts_per_tok, dim=-1).indices
        weights = scores.gather(1, expert_ids)
        if c.num_experts_per_tok > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return expert_ids, weights * c.routed_scaling_factor


class LLaDA2MoeSparseMoeBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.experts = nn.ModuleList(
            SwiGLU(c.hidden_size, c.moe_intermediate_size) for _ in range(c.num_experts)
        )
        self.gate = LLaDA2MoeGate(c)
        width = c.moe_intermediate_size * c.num_shared_experts
        self.shared_experts = SwiGLU(c.hidden_size, width)

    def forward(self, h):
        flat = h.reshape(-1, h.shape[-1])
        expert_ids, weights = self.gate(flat)
        out = _mix_experts(flat, self.experts, expert_ids, weights) + self.shared_experts(flat)
        return out.view(h.shape)


class LLaDA2MoeAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        width = (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
        self.query_key_value = nn.Linear(c.hidden_size, width, bias=c.use_qkv_bias)
        self.query_layernorm = RMSNorm(c.head_dim, c.rms_norm_eps)
        self.key_layernorm = RMSNorm(c.head_dim, c.rms_norm_eps)
        self.dense = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=c.use_bias)

    def forward(self, h, positions, key_valid, allowed):
        c = self.c
        qkv = self.query_key_value(h).view(*h.shape[:2], -1, c.head_dim)
        q, k, v = qkv.split(
            [c.num_attention_heads, c.num_key_value_heads, c.num_key_value_heads], dim=2
        )
        extras = {"q_norm": self.query_layernorm, "k_norm": self.key_layernorm}
        extras["rotary"] = c.partial_rotary_factor
        if allowed is not None:
            extras["allowed"] = allowed
        heads = (c.num_attention_heads, c.num_key_value_heads, c.rope_theta)
        flat = (t.reshape(*h.shape[:2], -1) for t in (q, k, v))
        return self.dense(_attention(*flat, *heads, positions, key_valid, extras))


class LLaDA2MoeDecoderLayer(nn.Module):
    def __init__(self, c, layer: int):
        super().__init__()
        self.attention = LLaDA2MoeAttention(c)
        dense = layer < c.first_k_dense_replace
        self.mlp = (
            SwiGLU(c.hidden_size, c.intermediate_size) if dense else LLaDA2MoeSparseMoeBlock(c)
        )
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, positions, key_valid, allowed):
        x = x + self.attention(self.input_layernorm(x), positions, key_valid, allowed)
        return x + self.mlp(self.post_attention_layernorm(x))


class LLaDA2MoeModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(LLaDA2MoeDecoderLayer(c, i) for i in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


def _logical_positions(input_ids, key_valid):
    if key_valid is None:
        return torch.arange(input_ids.shape[1])[None]
    return (key_valid.long().cumsum(-1) - 1).masked_fill(~key_valid, 1)


class LLaDA2MoeModelLM(nn.Module):
    """``model.{word_embeddings, layers.{i}.{attention, mlp, *_layernorm}, norm}``, ``lm_head``;
    per-head QK-norm before a partial RoPE; MoE from ``first_k_dense_replace`` on."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.config = config
        self.model = LLaDA2MoeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids, attention_mask=None, block_length=None):
        key_valid = None if attention_mask is None else attention_mask.bool()
        positions = _logical_positions(input_ids, key_valid)
        allowed = None
        if block_length is not None:
            block = torch.arange(input_ids.shape[1]) // block_length
            allowed = block[:, None] >= block[None, :]
        x = self.model.word_embeddings(input_ids)
        for layer in self.model.layers:
            x = layer(x, positions, key_valid, allowed)
        return SimpleNamespace(logits=self.lm_head(self.model.norm(x)))


class LLaDAMoESparseMoeBlock(nn.Module):
    """Softmax router; ``expert_bias`` (a buffer) is added to the probabilities, which weight
    the chosen experts unnormalised."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.gate = nn.Linear(c.hidden_size, c.num_experts, bias=False)
        self.experts = nn.ModuleList(
            SwiGLU(c.hidden_size, c.expert_intermediate_size) for _ in range(c.num_experts)
        )
        self.register_buffer("expert_bias", torch.zeros(c.num_experts))

    def forward(self, h):
        flat = h.reshape(-1, h.shape[-1])
        probs = F.softmax(self.gate(flat).float(), dim=-1) + self.expert_bias
        weights, expert_ids = probs.topk(self.c.num_experts_per_tok, dim=-1)
        return _mix_experts(flat, self.experts, expert_ids, weights.to(h.dtype)).view(h.shape)


class LLaDAMoEAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        d, kv = c.hidden_size, c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
        self.q_proj = nn.Linear(d, d, bias=c.attention_bias)
        self.k_proj = nn.Linear(d, kv, bias=c.attention_bias)
        self.v_proj = nn.Linear(d, kv, bias=c.attention_bias)
        self.o_proj = nn.Linear(d, d, bias=c.attention_bias)
        self.q_norm = RMSNorm(d // c.num_attention_heads, c.rms_norm_eps)
        self.k_norm = RMSNorm(d // c.num_attention_heads, c.rms_norm_eps)

    def forward(self, h, positions, key_valid):
        c = self.c
        extras = {"q_norm": self.q_norm, "k_norm": self.k_norm, "clip": c.clip_qkv}
        extras["rotary"] = c.partial_rotary_factor
        heads = (c.num_attention_heads, c.num_key_value_heads, c.rope_theta)
        att = _attention(
            self.q_proj(h), self.k_proj(h), self.v_proj(h), *heads, positions, key_valid, extras
        )
        return self.o_proj(att)


class LLaDAMoEDecoderLayer(nn.Module):
    def __init__(self, c, layer: int):
        super().__init__()
        self.self_attn = LLaDAMoEAttention(c)
        self.moe = bool(c.moe_layer_freq[layer])
        self.mlp = (
            LLaDAMoESparseMoeBlock(c)
            if self.moe
            else SwiGLU(c.hidden_size, c.dense_intermediate_size)
        )
        if self.moe:
            self.shared_expert = SwiGLU(c.hidden_size, c.shared_expert_intermediate_size)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, positions, key_valid):
        x = x + self.self_attn(self.input_layernorm(x), positions, key_valid)
        h = self.post_attention_layernorm(x)
        return x + self.mlp(h) + (self.shared_expert(h) if self.moe else 0)


class LLaDAMoEModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(LLaDAMoEDecoderLayer(c, i) for i in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class LLaDAMoEModelLM(nn.Module):
    """``model.{embed_tokens, layers.{i}.{self_attn, mlp, shared_expert, *_layernorm}, norm}``,
    ``lm_head``; positions are the physical index, padded keys masked."""

    def __init__(self, config: LLaDAMoEConfig):
        super().__init__()
        self.config = config
        self.model = LLaDAMoEModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids, attention_mask=None):
        key_valid = None if attention_mask is None else attention_mask.bool()
        positions = torch.arange(input_ids.shape[1])[None]
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, positions, key_valid)
        return SimpleNamespace(logits=self.lm_head(self.model.norm(x)))


STANDINS = {
    "llada": (LLaDAModelLM, LLaDAConfig),
    "dream": (DreamModel, DreamConfig),
    "llada2": (LLaDA2MoeModelLM, LLaDA2MoeConfig),
    "llada_moe": (LLaDAMoEModelLM, LLaDAMoEConfig),
}


def standin(family: str, config: dict, seed: int = 0) -> nn.Module:
    """A stand-in of ``family`` built from a ``config.json`` dict, with random weights
    scaled as ``tiny_checkpoints.random_weights`` scales them (the expert-bias buffers too),
    in eval mode."""
    cls, config_cls = STANDINS[family]
    # transformers 5 warns on the published Dream config's "rope_scaling": null.
    model = cls(config_cls(**{k: v for k, v in config.items() if k != "rope_scaling"}))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            noise = torch.randn(tensor.shape, generator=generator)
            if "norm" in name or name.endswith("ln_f.weight"):
                tensor.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                tensor.copy_(0.2 * noise)
            else:
                tensor.copy_(noise / tensor.shape[-1] ** 0.5)
    return model.eval()

"""The mixture-of-experts layer, the spec: both routers and the experts, token by token.

Everything in float64, in Python loops over tokens and experts. The routers rank with ties
to the lower index (expert, and LLaDA2's group), the order ``mosa_kernels.ops.moe`` keeps.
"""

from __future__ import annotations

import torch


def route_grouped_sigmoid(
    logits, expert_bias, *, top_k, n_group, topk_group, routed_scaling_factor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``mosa_kernels.route_grouped_sigmoid``; weights in float64,
    differentiable w.r.t. ``logits`` (the selection is not)."""
    tokens, num_experts = logits.shape
    group_size = num_experts // n_group
    ids, weights = [], []
    for n in range(tokens):
        scores = 1.0 / (1.0 + torch.exp(-logits[n].double()))
        biased = [
            float(s) + float(b) for s, b in zip(scores.detach(), expert_bias.double(), strict=True)
        ]
        group_score = []
        for g in range(n_group):
            members = sorted(biased[g * group_size : (g + 1) * group_size], reverse=True)
            group_score.append(members[0] + members[1])
        kept = _ranked(group_score)[:topk_group]
        eligible = [e for e in range(num_experts) if e // group_size in kept]
        chosen = sorted(eligible, key=lambda e: (-biased[e], e))[:top_k]
        picked = torch.stack([scores[e] for e in chosen])
        if top_k > 1:
            picked = picked / (picked.sum() + 1e-20)
        ids.append(chosen)
        weights.append(picked * routed_scaling_factor)
    return _as_routing(ids, weights, top_k)


def route_softmax(logits, *, top_k, expert_bias=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``mosa_kernels.route_softmax``; weights in float64, differentiable
    w.r.t. ``logits``."""
    ids, weights = [], []
    for n in range(logits.shape[0]):
        row = logits[n].double()
        exps = torch.exp(row - row.max())
        probs = exps / exps.sum()
        if expert_bias is not None:
            probs = probs + expert_bias.double()
        chosen = _ranked([float(p) for p in probs.detach()])[:top_k]
        ids.append(chosen)
        weights.append(torch.stack([probs[e] for e in chosen]))
    return _as_routing(ids, weights, top_k)


def _as_routing(ids, weights, top_k):
    if not ids:
        return torch.zeros(0, top_k, dtype=torch.int64), torch.zeros(0, top_k, dtype=torch.float64)
    return torch.tensor(ids, dtype=torch.int64), torch.stack(weights)


def moe_swiglu(x, expert_ids, weights, gate_w, up_w, down_w) -> torch.Tensor:
    """Same contract as ``mosa_kernels.moe_swiglu``, in float64 (differentiable)."""
    rows = []
    for n in range(x.shape[0]):
        h = x[n].double()
        total = torch.zeros(x.shape[1], dtype=torch.float64)
        for j in range(expert_ids.shape[1]):
            e = int(expert_ids[n, j])
            gate = gate_w[e].double() @ h
            up = up_w[e].double() @ h
            total = total + weights[n, j].double() * (down_w[e].double() @ (_silu(gate) * up))
        rows.append(total)
    return torch.stack(rows) if rows else torch.zeros(0, x.shape[1], dtype=torch.float64)


def swiglu_mlp(h, gate_w, up_w, down_w) -> torch.Tensor:
    """One SwiGLU MLP (a shared expert) on ``h [N, d]``, in float64."""
    h = h.double()
    return (_silu(h @ gate_w.double().T) * (h @ up_w.double().T)) @ down_w.double().T


def llada2_moe_layer(
    h,
    gate_weight,
    expert_bias,
    experts,
    shared=None,
    *,
    top_k,
    n_group,
    topk_group,
    routed_scaling_factor,
) -> torch.Tensor:
    """LLaDA2's sparse MoE block on ``h [B, L, d]``: the router on ``h @ gate_weight.T``,
    the routed experts ``experts = (gate_w, up_w, down_w)``, plus the shared experts'
    MLP ``shared = (gate, up, down)`` when given."""
    flat = h.reshape(-1, h.shape[-1]).double()
    ids, weights = route_grouped_sigmoid(
        flat @ gate_weight.double().T,
        expert_bias,
        top_k=top_k,
        n_group=n_group,
        topk_group=topk_group,
        routed_scaling_factor=routed_scaling_factor,
    )
    out = moe_swiglu(flat, ids, weights, *experts)
    if shared is not None:
        out = out + swiglu_mlp(flat, *shared)
    return out.reshape(h.shape)


def lladamoe_moe_layer(h, gate_weight, experts, expert_bias=None, *, top_k) -> torch.Tensor:
    """LLaDA-MoE's sparse MoE block on ``h [B, L, d]`` (its shared expert sits outside the
    block, in the decoder layer)."""
    flat = h.reshape(-1, h.shape[-1]).double()
    ids, weights = route_softmax(
        flat @ gate_weight.double().T, top_k=top_k, expert_bias=expert_bias
    )
    return moe_swiglu(flat, ids, weights, *experts).reshape(h.shape)


def _ranked(values) -> list[int]:
    """Indices by descending value, ties to the lower index."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def _silu(v: torch.Tensor) -> torch.Tensor:
    return v / (1.0 + torch.exp(-v))

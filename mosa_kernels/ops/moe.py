"""Mixture-of-experts ops: the two routers and the routed SwiGLU experts (docs/DESIGN.md §4.4).

Every op here runs on the device without a host read, so a CUDA graph can capture it, except
the per-expert loops, which read how many tokens each expert got: ``moe_swiglu``'s float64
CPU path and ``moe_expert_loop`` (experts that are modules, e.g. carrying LoRA adapters).
These ops are compositions of torch ops (``torch._grouped_mm`` for the expert GEMMs), not
backend kernels: they do not go through ``mosa_kernels.dispatch``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ._checks import check_nonnegative, check_positive_int, check_same_device, check_tensor

# ``torch._grouped_mm`` takes these; float64 runs the per-expert loop (CPU only).
GROUPED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# CUDA's grouped GEMM wants every row stride a multiple of 16 bytes; odd sizes are zero-padded.
GROUPED_ALIGN_BYTES = 16
MOE_PATHS = ("auto", "grouped", "loop")
# LLaDA2's router: the epsilon of its weight normalisation (published ``LLaDA2MoeGate``).
NORM_EPS = 1e-20


def route_grouped_sigmoid(
    logits: torch.Tensor,
    expert_bias: torch.Tensor,
    *,
    top_k: int,
    n_group: int,
    topk_group: int,
    routed_scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA2's router: sigmoid scores, biased group-limited top-k, unbiased normalised weights.

    Args:
        logits: ``[N, E]`` router logits (LLaDA2 makes them in fp32 from fp32 casts of the
            hidden states and gate weight); computed on in fp32.
        expert_bias: ``[E]``, added to the scores for the selection only.
        top_k: experts per token, ``<= topk_group * E / n_group``.
        n_group: expert groups (divides E, at least 2 experts a group); ``topk_group`` of
            them are kept per token, ranked by the sum of their two best biased scores.
        routed_scaling_factor: multiplies the weights.

    Returns ``(expert_ids int64[N, top_k], weights float32[N, top_k])``: the experts in
    descending biased score, ties to the lower id (groups likewise to the lower group); the
    weights are the selected experts' unbiased sigmoid scores divided by their sum
    (+ 1e-20) when ``top_k > 1``, times ``routed_scaling_factor``. No host read.
    """
    num_experts = _check_logits(logits)
    check_tensor("expert_bias", expert_bias, floating=True)
    if expert_bias.shape != (num_experts,):
        raise ValueError(
            f"expert_bias must be [E] = [{num_experts}], got {tuple(expert_bias.shape)}"
        )
    check_same_device(logits=logits, expert_bias=expert_bias)
    check_positive_int("n_group", n_group)
    check_positive_int("topk_group", topk_group)
    check_nonnegative("routed_scaling_factor", routed_scaling_factor)
    if num_experts % n_group or num_experts // n_group < 2:
        raise ValueError(
            f"n_group ({n_group}) must divide the number of experts ({num_experts}) into "
            "groups of at least 2 experts (a group is scored by its 2 best experts)"
        )
    if topk_group > n_group:
        raise ValueError(f"topk_group ({topk_group}) must be <= n_group ({n_group})")
    eligible = topk_group * (num_experts // n_group)
    _check_top_k(top_k, eligible, f"the {eligible} experts of the topk_group kept groups")

    scores = torch.sigmoid(logits.float())
    biased = scores + expert_bias.float()
    tokens = biased.shape[0]
    grouped = biased.view(tokens, n_group, num_experts // n_group)
    group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
    kept_groups = _top_indices(group_scores, topk_group)
    group_kept = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept_groups, True)
    candidates = grouped.masked_fill(~group_kept[..., None], float("-inf")).view(tokens, -1)
    expert_ids = _top_indices(candidates, top_k)
    weights = scores.gather(1, expert_ids)
    if top_k > 1:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + NORM_EPS)
    return expert_ids, weights * routed_scaling_factor


def route_softmax(
    logits: torch.Tensor, *, top_k: int, expert_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA-MoE's (OLMoE-style) router: softmax over the experts, top-k, no normalisation.

    Args:
        logits: ``[N, E]`` router logits (any float dtype); the softmax runs in fp32.
        top_k: experts per token, ``<= E``.
        expert_bias: optional ``[E]``; when given it is added to the softmax probabilities
            and the biased values are both what is ranked and the weights (the published
            block's ``moe_router_enable_expert_bias``).

    Returns ``(expert_ids int64[N, top_k], weights float32[N, top_k])``, experts in
    descending weight, ties to the lower id. No host read.
    """
    num_experts = _check_logits(logits)
    _check_top_k(top_k, num_experts, "the number of experts")
    probs = torch.softmax(logits.float(), dim=-1)
    if expert_bias is not None:
        check_tensor("expert_bias", expert_bias, floating=True)
        if expert_bias.shape != (num_experts,):
            raise ValueError(
                f"expert_bias must be [E] = [{num_experts}], got {tuple(expert_bias.shape)}"
            )
        check_same_device(logits=logits, expert_bias=expert_bias)
        probs = probs + expert_bias.float()
    expert_ids = _top_indices(probs, top_k)
    return expert_ids, probs.gather(1, expert_ids)


def moe_swiglu(
    x: torch.Tensor,
    expert_ids: torch.Tensor,
    weights: torch.Tensor,
    gate_w: torch.Tensor,
    up_w: torch.Tensor,
    down_w: torch.Tensor,
    *,
    path: str = "auto",
) -> torch.Tensor:
    """``y[n] = sum_j weights[n, j] * expert_{ids[n, j]}(x[n])`` with SwiGLU experts.

    ``expert_e(h) = down_w[e] @ (silu(gate_w[e] @ h) * (up_w[e] @ h))``, the three products
    and the activation in x's dtype (as ``nn.Linear`` experts compute), the weighted sum over
    the ``k`` experts in fp32 (float64 for float64 x), in the order of ``expert_ids``'
    columns, then cast to x's dtype.

    Args:
        x: ``[N, d]`` hidden states (fp32, fp16, bf16; float64 on the CPU path).
        expert_ids: ``int64[N, k]`` expert of each (token, slot), in ``[0, E)`` (not checked:
            that would read the device; the routers' ids are valid).
        weights: ``[N, k]`` float weights (used in the accumulation dtype).
        gate_w, up_w: ``[E, I, d]``; down_w: ``[E, d, I]`` (``nn.Linear`` weights stacked),
            x's dtype and device.
        path: ``"grouped"``: tokens sorted by expert, three grouped GEMMs through
            ``torch._grouped_mm`` with per-expert offsets counted on the device (no host
            read; needs fp32/fp16/bf16); ``"loop"``: one GEMM chain per expert that got
            tokens (reads the counts on the host; CPU tensors only: the twin the grouped
            path is tested against, and float64); ``"auto"``: ``"grouped"`` for fp32, fp16
            and bf16 on every device (so a CPU run takes the path a GPU takes, host-read
            free), ``"loop"`` for float64. On CUDA, torch runs a fused grouped GEMM for
            bf16 on sm90/sm100 (H100, H200); other cases take torch's own fallback, a loop
            of matmuls that reads the offsets on the host.

    Returns ``[N, d]`` in x's dtype, differentiable w.r.t. x, weights and the expert weights.
    """
    chosen = _check_moe_args(x, expert_ids, weights, gate_w, up_w, down_w, path)
    if chosen == "loop":
        experts = [_StackedExpert(gate_w, up_w, down_w, e) for e in range(gate_w.shape[0])]
        return moe_expert_loop(x, expert_ids, weights, experts)
    return _grouped_swiglu(x, expert_ids, weights, gate_w, up_w, down_w)


def moe_expert_loop(
    x: torch.Tensor,
    expert_ids: torch.Tensor,
    weights: torch.Tensor,
    experts: Sequence[Callable[[torch.Tensor], torch.Tensor]],
) -> torch.Tensor:
    """The weighted sum of ``moe_swiglu`` with experts that are callables ``[n, d] -> [n, d]``.

    One call per expert that got tokens, over its tokens in token order; the outputs are
    weighted and summed over the k slots in fp32 as ``moe_swiglu`` does. Reads the per-expert
    counts on the host (one sync on a GPU): the path for experts that are modules rather than
    stacked weights, e.g. ones carrying LoRA adapters.
    """
    _check_routing(x, expert_ids, weights)
    if not len(experts):
        raise ValueError("experts must hold at least one expert")
    order, counts = _sort_by_expert(expert_ids, len(experts))
    sorted_x = x.index_select(0, order // expert_ids.shape[1])
    outputs = []
    for expert, rows in zip(experts, sorted_x.split(counts.tolist()), strict=True):
        if rows.shape[0]:
            outputs.append(expert(rows))
    if not outputs:  # no tokens
        return x.new_zeros(x.shape)
    return _combine(torch.cat(outputs), order, weights, x.dtype)


class _StackedExpert:
    """Expert ``e`` of stacked SwiGLU weights as a callable (the loop path of ``moe_swiglu``)."""

    def __init__(self, gate_w, up_w, down_w, e):
        self.gate, self.up, self.down = gate_w[e], up_w[e], down_w[e]

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        return F.linear(F.silu(F.linear(rows, self.gate)) * F.linear(rows, self.up), self.down)


def _grouped_swiglu(x, expert_ids, weights, gate_w, up_w, down_w):
    num_experts, inner, hidden = gate_w.shape
    order, counts = _sort_by_expert(expert_ids, num_experts)
    offsets = counts.cumsum(0).to(torch.int32)
    padded_x, gate_w, up_w, down_w = _aligned(x, gate_w, up_w, down_w)
    sorted_x = padded_x.index_select(0, order // expert_ids.shape[1])
    # nn.Linear weights [E, out, in] transposed are the column-major [E, in, out] the grouped
    # GEMM takes without a copy.
    gate = torch._grouped_mm(sorted_x, gate_w.transpose(1, 2), offs=offsets)
    up = torch._grouped_mm(sorted_x, up_w.transpose(1, 2), offs=offsets)
    out = torch._grouped_mm(F.silu(gate) * up, down_w.transpose(1, 2), offs=offsets)
    return _combine(out[:, :hidden], order, weights, x.dtype)


def _aligned(x, gate_w, up_w, down_w):
    """Zero-pads d and I to whole 16-byte rows (grouped GEMM strides); exact, since the padded
    inputs and weights are zeros and ``silu(0) * 0 = 0``. A copy: for odd (test) sizes only."""
    per_row = GROUPED_ALIGN_BYTES // x.element_size()
    inner, hidden = gate_w.shape[1], gate_w.shape[2]
    pad_i, pad_d = -inner % per_row, -hidden % per_row
    if not pad_i and not pad_d:
        return x, gate_w, up_w, down_w
    return (
        F.pad(x, (0, pad_d)),
        F.pad(gate_w, (0, pad_d, 0, pad_i)),
        F.pad(up_w, (0, pad_d, 0, pad_i)),
        F.pad(down_w, (0, pad_i, 0, pad_d)),
    )


def _sort_by_expert(expert_ids: torch.Tensor, num_experts: int):
    """``(order, counts)``: the (token, slot) assignments flattened and stably sorted by expert,
    and how many each expert got, counted on the device (``bincount`` would size its output
    from the data)."""
    flat = expert_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    return order, counts


def _combine(sorted_out, order, weights, dtype):
    """Puts the per-assignment outputs (sorted by expert) back in (token, slot) order and sums
    the k slots of each token, weighted, in fp32: a gather, so no atomics and a fixed order."""
    slots = weights.shape[1]
    position = torch.empty_like(order).scatter_(
        0, order, torch.arange(order.numel(), device=order.device)
    )
    per_slot = sorted_out.index_select(0, position).view(
        weights.shape[0], slots, sorted_out.shape[1]
    )
    acc = torch.promote_types(dtype, torch.float32)  # fp32, or float64 for float64 inputs
    return (per_slot.to(acc) * weights.to(acc)[..., None]).sum(dim=1).to(dtype)


def _top_indices(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest of each row, descending, ties to the lower index (a stable
    sort: ``torch.topk`` leaves the order of ties unspecified)."""
    return torch.sort(values, dim=-1, descending=True, stable=True).indices[:, :k]


def _check_logits(logits) -> int:
    check_tensor("logits", logits, ndim_min=2, floating=True)
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must be [N, E] with E >= 1, got shape {tuple(logits.shape)}")
    return logits.shape[1]


def _check_top_k(top_k, limit: int, what: str) -> None:
    check_positive_int("top_k", top_k)
    if top_k > limit:
        raise ValueError(f"top_k ({top_k}) must be <= {what} ({limit})")


def _check_routing(x, expert_ids, weights) -> None:
    check_tensor("x", x, ndim_min=2, floating=True)
    if x.dim() != 2:
        raise ValueError(f"x must be [N, d] (flatten the batch), got shape {tuple(x.shape)}")
    check_tensor("expert_ids", expert_ids, ndim_min=2, floating=False)
    if expert_ids.dtype != torch.int64:
        raise TypeError(f"expert_ids must be int64, got {expert_ids.dtype}")
    if expert_ids.dim() != 2 or expert_ids.shape[0] != x.shape[0] or expert_ids.shape[1] < 1:
        raise ValueError(
            f"expert_ids must be [N, k] with N = {x.shape[0]} (x's rows) and k >= 1, "
            f"got shape {tuple(expert_ids.shape)}"
        )
    check_tensor("weights", weights, floating=True)
    if weights.shape != expert_ids.shape:
        raise ValueError(
            f"weights must have expert_ids' shape {tuple(expert_ids.shape)}, got {tuple(weights.shape)}"
        )
    check_same_device(x=x, expert_ids=expert_ids, weights=weights)


def _check_moe_args(x, expert_ids, weights, gate_w, up_w, down_w, path) -> str:
    """Checks ``moe_swiglu``'s arguments; returns the path it takes."""
    _check_routing(x, expert_ids, weights)
    for name, w in (("gate_w", gate_w), ("up_w", up_w), ("down_w", down_w)):
        check_tensor(name, w, ndim_min=3, floating=True)
        if w.dim() != 3:
            raise ValueError(f"{name} must be 3-D [E, out, in], got shape {tuple(w.shape)}")
        if w.dtype != x.dtype:
            raise TypeError(f"{name} is {w.dtype} but x is {x.dtype}; cast one of them")
    num_experts, inner, hidden = gate_w.shape
    if hidden != x.shape[1]:
        raise ValueError(
            f"gate_w must be [E, I, d] with d = {x.shape[1]}, got {tuple(gate_w.shape)}"
        )
    if up_w.shape != gate_w.shape:
        raise ValueError(f"up_w must match gate_w {tuple(gate_w.shape)}, got {tuple(up_w.shape)}")
    if down_w.shape != (num_experts, hidden, inner):
        raise ValueError(
            f"down_w must be [E, d, I] = {(num_experts, hidden, inner)}, got {tuple(down_w.shape)}"
        )
    device = check_same_device(x=x, gate_w=gate_w, up_w=up_w, down_w=down_w, expert_ids=expert_ids)
    if path not in MOE_PATHS:
        raise ValueError(f"path must be one of {MOE_PATHS}, got {path!r}")
    if path == "auto":
        # float64 (tests, references) is the one dtype torch._grouped_mm lacks.
        path = "grouped" if x.dtype in GROUPED_DTYPES else "loop"
    if path == "loop" and device.type != "cpu":
        raise ValueError(
            "path='loop' reads per-expert counts on the host and runs on CPU tensors only; "
            "use path='grouped' (or 'auto') on a GPU"
        )
    if path == "grouped" and x.dtype not in GROUPED_DTYPES:
        raise TypeError(
            f"path='grouped' takes float32, float16 or bfloat16 (torch._grouped_mm), got {x.dtype}; "
            "cast the inputs or use path='loop' on the CPU"
        )
    return path

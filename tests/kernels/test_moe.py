"""The MoE ops against their float64 reference: both routers, ``moe_swiglu`` (grouped GEMM and
per-expert loop paths, values and gradients), ``moe_expert_loop``, no host reads, bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from inputs import BF16_TOL, FP32_TOL, GRAD_TOL, as64, assert_close, needs_cuda, randint, randn

from mosa_kernels import moe_expert_loop, moe_swiglu, route_grouped_sigmoid, route_softmax
from mosa_kernels.reference import moe as reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sampling"))
from sampling_builders import no_host_reads  # noqa: E402

# (tokens, experts, n_group, topk_group, top_k): odd token counts, expert counts that are not
# powers of two, one group, every group kept, top-1 (no normalisation), every expert taken.
SIGMOID_CASES = [
    (7, 12, 4, 2, 3),
    (13, 10, 5, 3, 4),
    (5, 8, 1, 1, 1),
    (9, 6, 3, 3, 6),
    (1, 24, 6, 2, 5),
]
SOFTMAX_CASES = [(7, 12, 3), (13, 10, 1), (4, 5, 5)]
# (tokens, d, I, experts, k): odd sizes (zero-padded to 16-byte rows on the grouped path),
# aligned ones, one token.
SWIGLU_CASES = [(7, 13, 11, 6, 3), (16, 16, 8, 5, 2), (1, 9, 5, 3, 3), (11, 8, 12, 1, 2)]


def _sigmoid_route(logits, bias, n_group, topk_group, top_k, scale=2.5):
    kwargs = dict(top_k=top_k, n_group=n_group, topk_group=topk_group, routed_scaling_factor=scale)
    return route_grouped_sigmoid(logits, bias, **kwargs), reference.route_grouped_sigmoid(
        as64(logits), as64(bias), **kwargs
    )


@pytest.mark.parametrize("tokens, experts, n_group, topk_group, top_k", SIGMOID_CASES)
def test_grouped_sigmoid_router_matches_reference(
    tokens, experts, n_group, topk_group, top_k, poison_outputs
):
    logits = randn((tokens, experts), seed=tokens + experts, scale=2.0)
    bias = randn((experts,), seed=1, scale=0.3)
    (ids, weights), (ref_ids, ref_weights) = _sigmoid_route(
        logits, bias, n_group, topk_group, top_k
    )
    assert ids.dtype == torch.int64 and weights.dtype == torch.float32
    assert torch.equal(ids, ref_ids)
    assert_close(weights, ref_weights, rel=FP32_TOL, what="weights")


def test_grouped_sigmoid_router_selects_by_bias_but_weighs_without_it():
    logits = randn((6, 8), seed=3)
    bias = torch.zeros(8)
    bias[5] = 10.0  # expert 5 wins every token's selection
    (ids, weights), (ref_ids, ref_weights) = _sigmoid_route(logits, bias, 2, 1, 2, scale=1.0)
    assert torch.equal(ids[:, 0], torch.full((6,), 5)) and torch.equal(ids, ref_ids)
    scores = torch.sigmoid(logits).gather(1, ids)
    assert_close(weights, scores / scores.sum(-1, keepdim=True), rel=FP32_TOL)
    assert_close(weights, ref_weights, rel=FP32_TOL)


def test_grouped_sigmoid_router_breaks_ties_to_the_lower_expert_and_group():
    # Few distinct logits: equal scores inside groups, equal group scores across groups.
    logits = (randint((9, 12), 0, 3, seed=4) - 1).float()
    bias = torch.zeros(12)
    (ids, weights), (ref_ids, ref_weights) = _sigmoid_route(logits, bias, 4, 2, 3)
    assert torch.equal(ids, ref_ids)
    assert_close(weights, ref_weights, rel=FP32_TOL)
    flat = torch.zeros(1, 12)
    (ids, _), _ = _sigmoid_route(flat, bias, 4, 2, 3)
    assert ids.tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("tokens, experts, top_k", SOFTMAX_CASES)
def test_softmax_router_matches_reference(tokens, experts, top_k, with_bias, poison_outputs):
    logits = randn((tokens, experts), seed=tokens * experts, scale=2.0)
    bias = randn((experts,), seed=2, scale=0.1) if with_bias else None
    ids, weights = route_softmax(logits, top_k=top_k, expert_bias=bias)
    ref_ids, ref_weights = reference.route_softmax(
        as64(logits), top_k=top_k, expert_bias=None if bias is None else as64(bias)
    )
    assert torch.equal(ids, ref_ids)
    assert_close(weights, ref_weights, rel=FP32_TOL, what="weights")


def test_softmax_router_ranks_ties_to_the_lower_expert_and_takes_bf16_logits():
    logits = (randint((8, 7), 0, 2, seed=5)).to(torch.bfloat16)
    ids, weights = route_softmax(logits, top_k=3)
    ref_ids, ref_weights = reference.route_softmax(as64(logits), top_k=3)
    assert torch.equal(ids, ref_ids) and weights.dtype == torch.float32
    assert_close(weights, ref_weights, rel=FP32_TOL)


def _swiglu_inputs(tokens, d, inner, experts, k, *, dtype=torch.float32, device="cpu"):
    """Random hidden states, weights and expert ids; ids may repeat inside a token and leave
    experts without tokens."""
    seed = tokens * 7 + d
    x = randn((tokens, d), seed=seed, dtype=dtype, device=device)
    ids = randint((tokens, k), 0, experts, seed=seed + 1, device=device)
    weights = randn((tokens, k), seed=seed + 2, device=device).abs()
    gate = randn((experts, inner, d), seed=seed + 3, scale=d**-0.5, dtype=dtype, device=device)
    up = randn((experts, inner, d), seed=seed + 4, scale=d**-0.5, dtype=dtype, device=device)
    down = randn((experts, d, inner), seed=seed + 5, scale=inner**-0.5, dtype=dtype, device=device)
    return x, ids, weights, gate, up, down


@pytest.mark.parametrize("path", ["grouped", "loop"])
@pytest.mark.parametrize("tokens, d, inner, experts, k", SWIGLU_CASES)
def test_moe_swiglu_matches_reference(tokens, d, inner, experts, k, path, poison_outputs):
    args = _swiglu_inputs(tokens, d, inner, experts, k)
    out = moe_swiglu(*args, path=path)
    assert out.dtype == torch.float32
    assert_close(out, reference.moe_swiglu(*map(as64, args)), rel=FP32_TOL)


def test_moe_swiglu_bf16_grouped_matches_reference():
    args = _swiglu_inputs(9, 16, 24, 5, 3, dtype=torch.bfloat16)
    out = moe_swiglu(*args)  # auto: grouped for bf16
    assert out.dtype == torch.bfloat16
    assert_close(out, reference.moe_swiglu(*map(as64, args)), rel=BF16_TOL)


def test_moe_swiglu_grouped_path_equals_loop_path():
    args = _swiglu_inputs(15, 13, 11, 7, 4)
    assert_close(moe_swiglu(*args, path="grouped"), moe_swiglu(*args, path="loop"), rel=1e-6)


def test_moe_swiglu_float64_auto_takes_the_loop_and_matches_reference_tightly():
    args = [as64(t) if t.is_floating_point() else t for t in _swiglu_inputs(7, 13, 11, 6, 3)]
    assert_close(moe_swiglu(*args), reference.moe_swiglu(*args), rel=1e-12)


def test_moe_swiglu_without_tokens_gives_an_empty_output():
    x, ids, weights, gate, up, down = _swiglu_inputs(4, 8, 8, 3, 2)
    for path in ("grouped", "loop"):
        out = moe_swiglu(x[:0], ids[:0], weights[:0], gate, up, down, path=path)
        assert out.shape == (0, 8)


@pytest.mark.parametrize("path", ["grouped", "loop"])
def test_moe_swiglu_gradients_match_reference_autograd(path):
    """Gradients w.r.t. the hidden states (what reaches attention's LoRA adapters), the routing
    weights (the router's path back to the hidden states) and the expert weights."""
    args = _swiglu_inputs(9, 13, 11, 5, 3)
    leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in args]
    ref_leaves = [as64(t).requires_grad_(t.is_floating_point()) for t in args]
    ref_leaves[1] = args[1]
    upstream = randn((9, 13), seed=11)
    moe_swiglu(*leaves, path=path).backward(upstream)
    reference.moe_swiglu(*ref_leaves).backward(as64(upstream))
    for name, leaf, ref in zip(
        ("x", "ids", "weights", "gate", "up", "down"), leaves, ref_leaves, strict=True
    ):
        if leaf.is_floating_point():
            assert_close(leaf.grad, ref.grad, rel=GRAD_TOL, what=f"d{name}")


def test_routers_and_grouped_path_read_nothing_on_the_host():
    """What a CUDA graph captures: routing and the grouped experts, forward and backward."""
    logits = randn((7, 12), seed=6)
    bias = randn((12,), seed=7, scale=0.1)
    x, _, _, gate, up, down = _swiglu_inputs(7, 16, 8, 12, 3)
    x.requires_grad_(True)
    with no_host_reads():
        ids, weights = route_grouped_sigmoid(
            logits, bias, top_k=3, n_group=4, topk_group=2, routed_scaling_factor=2.5
        )
        route_softmax(logits, top_k=3, expert_bias=bias)
        out = moe_swiglu(x, ids, weights, gate, up, down, path="grouped")
        out.backward(torch.ones_like(out))
    assert torch.isfinite(x.grad).all()


def test_expert_loop_calls_each_used_expert_once_on_its_tokens():
    x, ids, weights, gate, up, down = _swiglu_inputs(8, 8, 8, 4, 2)
    ids[:, :] = torch.tensor([1, 3])  # experts 0 and 2 get nothing
    calls = []

    def expert(e):
        def run(rows):
            calls.append((e, rows.shape[0]))
            return rows * (e + 1)

        return run

    out = moe_expert_loop(x, ids, weights, [expert(e) for e in range(4)])
    assert calls == [(1, 8), (3, 8)]
    expected = x * (2 * weights[:, :1] + 4 * weights[:, 1:])
    assert_close(out, expected, rel=FP32_TOL)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_moe_swiglu_on_cuda_matches_reference(dtype):
    args = _swiglu_inputs(37, 64, 32, 10, 4, dtype=dtype, device="cuda")
    out = moe_swiglu(*args)
    tol = BF16_TOL if dtype == torch.bfloat16 else FP32_TOL
    assert_close(out, reference.moe_swiglu(*map(as64, args)), rel=tol)
    ids, weights = route_grouped_sigmoid(
        randn((37, 10), seed=8, device="cuda"),
        torch.zeros(10, device="cuda"),
        top_k=4,
        n_group=5,
        topk_group=3,
        routed_scaling_factor=1.0,
    )
    assert ids.device.type == "cuda" and weights.device.type == "cuda"


def _bad(**overrides):
    x, ids, weights, gate, up, down = _swiglu_inputs(4, 8, 8, 3, 2)
    args = dict(x=x, expert_ids=ids, weights=weights, gate_w=gate, up_w=up, down_w=down)
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        ({"x": torch.zeros(2, 4, 8)}, ValueError, "x must be"),
        ({"expert_ids": torch.zeros(4, 2, dtype=torch.int32)}, TypeError, "int64"),
        ({"expert_ids": torch.zeros(4, 2)}, TypeError, "expert_ids must be an integer"),
        ({"expert_ids": torch.zeros(3, 2, dtype=torch.int64)}, ValueError, "expert_ids must be"),
        ({"weights": torch.ones(4, 3)}, ValueError, "weights must have"),
        ({"gate_w": torch.zeros(3, 8, 8, dtype=torch.float64)}, TypeError, "gate_w is"),
        ({"gate_w": torch.zeros(3, 8, 5)}, ValueError, "gate_w must be"),
        ({"up_w": torch.zeros(3, 7, 8)}, ValueError, "up_w must match"),
        ({"down_w": torch.zeros(3, 8, 7)}, ValueError, "down_w must be"),
        ({"down_w": torch.zeros(8, 8)}, ValueError, "down_w must"),
        ({"path": "fast"}, ValueError, "path must be one of"),
    ],
)
def test_moe_swiglu_rejects_bad_arguments(overrides, error, match):
    with pytest.raises(error, match=match):
        moe_swiglu(**_bad(**overrides))


def test_moe_swiglu_grouped_path_refuses_float64():
    args = [as64(t) if t.is_floating_point() else t for t in _swiglu_inputs(4, 8, 8, 3, 2)]
    with pytest.raises(TypeError, match="path='grouped' takes"):
        moe_swiglu(*args, path="grouped")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"top_k": 0}, "top_k must be"),
        ({"top_k": 7}, "top_k \\(7\\) must be <= the 6 experts"),
        ({"n_group": 5}, "n_group \\(5\\) must divide"),
        ({"n_group": 12}, "groups of at least 2"),
        ({"topk_group": 5}, "topk_group \\(5\\) must be <= n_group"),
        ({"routed_scaling_factor": -1.0}, "routed_scaling_factor"),
        ({"expert_bias": torch.zeros(11)}, "expert_bias must be"),
        ({"logits": torch.zeros(12)}, "logits must have"),
    ],
)
def test_grouped_sigmoid_router_rejects_bad_arguments(kwargs, match):
    args = dict(
        logits=torch.zeros(3, 12),
        expert_bias=torch.zeros(12),
        top_k=2,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=1.0,
    )
    args.update(kwargs)
    logits, bias = args.pop("logits"), args.pop("expert_bias")
    with pytest.raises(ValueError, match=match):
        route_grouped_sigmoid(logits, bias, **args)


def test_softmax_router_rejects_bad_arguments():
    with pytest.raises(ValueError, match="top_k \\(6\\) must be <= the number of experts"):
        route_softmax(torch.zeros(3, 5), top_k=6)
    with pytest.raises(ValueError, match="expert_bias must be"):
        route_softmax(torch.zeros(3, 5), top_k=2, expert_bias=torch.zeros(4))
    with pytest.raises(TypeError, match="logits must be a floating-point"):
        route_softmax(torch.zeros(3, 5, dtype=torch.int64), top_k=2)

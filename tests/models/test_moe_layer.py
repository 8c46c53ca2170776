"""The MoE blocks (``mosa.models.moe``) against the float64 reference layer; checkpoint names;
the packed expert weights (views, repacking after ``.to()`` / ``load_state_dict`` /
adoption); LoRA-wrapped experts; gradients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mosa.models.moe import (
    ExpertMLP,
    LLaDA2SparseMoe,
    LLaDAMoESparseMoe,
    RoutedExperts,
    pack_experts,
)
from mosa_kernels.reference import moe as reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
from inputs import BF16_TOL, FP32_TOL, GRAD_TOL, assert_close, randn  # noqa: E402

D, INNER, EXPERTS = 12, 10, 12
# Local copies of the published modeling files; the test against them is skipped without.
PUBLISHED_ENV = {"llada2": "MOSA_LLADA2_REFERENCE", "lladamoe": "MOSA_LLADAMOE_REFERENCE"}
PUBLISHED_CONFIG = {
    "llada2": dict(
        hidden_size=D,
        moe_intermediate_size=INNER,
        num_experts=EXPERTS,
        num_experts_per_tok=3,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        num_shared_experts=1,
    ),
    "lladamoe": dict(
        hidden_size=D,
        expert_intermediate_size=INNER,
        num_experts=EXPERTS,
        num_experts_per_tok=3,
        moe_router_enable_expert_bias=True,
    ),
}


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Fresh random values in every parameter and buffer (never the zero expert bias)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            fan_in = tensor.shape[-1] if tensor.dim() > 1 else 10
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * fan_in**-0.5)
    return module


def _llada2(num_shared=1, n_group=4, topk_group=2, top_k=3, seed=0):
    block = LLaDA2SparseMoe(D, INNER, EXPERTS, top_k, n_group, topk_group, 2.5, num_shared)
    return _randomise(block, seed)


def _lladamoe(expert_bias=True, top_k=3, seed=0):
    return _randomise(LLaDAMoESparseMoe(D, INNER, EXPERTS, top_k, expert_bias), seed)


def _experts(block) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.stack([getattr(e, name).weight.detach() for e in block.experts])
        for name in ("gate_proj", "up_proj", "down_proj")
    )


def _llada2_reference(block, h):
    shared = None
    if block.shared_experts is not None:
        s = block.shared_experts
        shared = (s.gate_proj.weight, s.up_proj.weight, s.down_proj.weight)
    gate = block.gate
    return reference.llada2_moe_layer(
        h.detach(),
        gate.weight.detach(),
        gate.expert_bias,
        _experts(block),
        None if shared is None else tuple(w.detach() for w in shared),
        top_k=gate.top_k,
        n_group=gate.n_group,
        topk_group=gate.topk_group,
        routed_scaling_factor=gate.routed_scaling_factor,
    )


def _lladamoe_reference(block, h):
    return reference.lladamoe_moe_layer(
        h.detach(),
        block.gate.weight.detach(),
        _experts(block),
        block.expert_bias,
        top_k=block.top_k,
    )


def _hidden(batch=2, length=5, seed=9, dtype=torch.float32):
    return randn((batch, length, D), seed=seed, dtype=dtype)


@pytest.mark.parametrize(
    "num_shared, n_group, topk_group, top_k",
    [(1, 4, 2, 3), (None, 3, 1, 2), (2, 1, 1, 1), (1, 6, 6, 5)],
    ids=["mini-like", "no-shared", "one-group-top1", "all-groups"],
)
def test_llada2_block_matches_reference(num_shared, n_group, topk_group, top_k):
    block = _llada2(num_shared, n_group, topk_group, top_k)
    h = _hidden(length=7)
    out = block(h)
    assert out.shape == h.shape and out.dtype == h.dtype
    assert_close(out, _llada2_reference(block, h), rel=FP32_TOL)


@pytest.mark.parametrize("expert_bias", [True, False], ids=["bias", "no-bias"])
def test_lladamoe_block_matches_reference(expert_bias):
    block = _lladamoe(expert_bias)
    h = _hidden(batch=3, length=3)
    assert_close(block(h), _lladamoe_reference(block, h), rel=FP32_TOL)


@pytest.mark.parametrize(
    "make, ref",
    [(_llada2, _llada2_reference), (_lladamoe, _lladamoe_reference)],
    ids=["llada2", "lladamoe"],
)
def test_bf16_blocks_match_reference(make, ref):
    block = make().to(torch.bfloat16)
    h = _hidden(length=6, dtype=torch.bfloat16)
    with torch.no_grad():
        out = block(h)
    assert out.dtype == torch.bfloat16
    assert_close(out, ref(block, h), rel=BF16_TOL)


def test_blocks_hold_the_checkpoint_names():
    def routed(prefix=""):
        return {
            f"{prefix}experts.{e}.{p}.weight"
            for e in range(EXPERTS)
            for p in ("gate_proj", "up_proj", "down_proj")
        }

    shared = {f"shared_experts.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")}
    llada2 = _llada2()
    assert set(llada2.state_dict()) == routed() | shared | {"gate.weight", "gate.expert_bias"}
    assert llada2.state_dict()["gate.weight"].shape == (EXPERTS, D)
    assert llada2.shared_experts.gate_proj.weight.shape == (INNER, D)
    assert set(_llada2(num_shared=None).state_dict()) == routed() | {
        "gate.weight",
        "gate.expert_bias",
    }
    assert set(_lladamoe(True).state_dict()) == routed() | {"gate.weight", "expert_bias"}
    assert set(_lladamoe(False).state_dict()) == routed() | {"gate.weight"}
    assert llada2.experts[3].down_proj.weight.shape == (D, INNER)


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _assert_packed(experts: RoutedExperts):
    """Every expert weight is a view of its projection's pack: 3 storages in all."""
    with torch.no_grad():  # as the samplers run; a weight needing gradients is stacked afresh
        packs = experts.stacked_weights()
    for name, pack in zip(("gate_proj", "up_proj", "down_proj"), packs, strict=True):
        for e, expert in enumerate(experts):
            weight = getattr(expert, name).weight
            assert weight.data_ptr() == pack[e].data_ptr(), (name, e)
            assert _storage(weight) == _storage(pack)
    assert len({_storage(w) for w in experts.parameters()}) == 3


@torch.no_grad()
def test_experts_are_packed_into_views_and_a_forward_changes_no_parameter():
    block = _llada2()
    _assert_packed(block.experts)  # from construction on
    params = [(p, p.data_ptr()) for p in block.parameters()]
    h = _hidden()
    assert_close(block(h), _llada2_reference(block, h), rel=FP32_TOL)
    assert all(p.data_ptr() == ptr for p, ptr in params)


def test_a_meta_block_has_no_packs_and_still_stacks():
    with torch.device("meta"):
        block = LLaDA2SparseMoe(D, INNER, EXPERTS, 3, 4, 2, 2.5, 1)
    assert block.experts._packs is None
    with torch.no_grad():
        gate, up, down = block.experts.stacked_weights()
    assert gate.shape == (EXPERTS, INNER, D) and down.shape == (EXPERTS, D, INNER)


@torch.no_grad()
def test_a_weight_replaced_by_hand_is_noticed_and_repacked():
    block = _lladamoe()
    h = _hidden()
    fresh = torch.randn(INNER, D)
    block.experts[0].gate_proj.weight = nn.Parameter(fresh.clone())
    out = block(h)
    _assert_packed(block.experts)
    assert torch.equal(block.experts.stacked_weights()[0][0], fresh)
    assert_close(out, _lladamoe_reference(block, h), rel=FP32_TOL)


@torch.no_grad()
def test_packing_survives_a_dtype_round_trip():
    block = _lladamoe()
    h = _hidden()
    block(h)
    block.to(torch.float64)
    _assert_packed(block.experts)  # packed again at once: the old packs are let go
    out = block(h.double())
    assert out.dtype == torch.float64  # the router still runs in fp32, as published
    assert_close(out, _lladamoe_reference(block, h), rel=FP32_TOL)
    _assert_packed(block.experts)
    block.to(torch.float32)
    assert_close(block(h), _lladamoe_reference(block, h), rel=FP32_TOL)
    _assert_packed(block.experts)


@torch.no_grad()
def test_load_state_dict_writes_through_the_packs():
    block, other = _llada2(seed=0), _llada2(seed=1)
    h = _hidden()
    block(h)
    packs = block.experts.stacked_weights()
    block.load_state_dict(other.state_dict())
    assert all(a is b for a, b in zip(block.experts.stacked_weights(), packs, strict=True))
    assert_close(block(h), _llada2_reference(other, h), rel=FP32_TOL)


@torch.no_grad()
def test_load_state_dict_with_assign_is_noticed_and_repacked():
    block, other = _llada2(seed=0), _llada2(seed=2)
    h = _hidden()
    block(h)
    block.load_state_dict({k: v.clone() for k, v in other.state_dict().items()}, assign=True)
    _assert_packed(block.experts)  # by the post-load hook, before any forward
    assert_close(block(h), _llada2_reference(other, h), rel=FP32_TOL)


class _ForeignExpert(nn.Module):
    """Stands in for a transformers model's expert (``LLaDA2MoeMLP``): same child names."""

    def __init__(self):
        super().__init__()
        self.gate_proj = nn.Linear(D, INNER, bias=False)
        self.up_proj = nn.Linear(D, INNER, bias=False)
        self.down_proj = nn.Linear(INNER, D, bias=False)


@torch.no_grad()
def test_adopted_experts_keep_sharing_storage_after_packing():
    block = _lladamoe()
    foreign = [_randomise(_ForeignExpert(), seed=e) for e in range(EXPERTS)]
    for e, expert in enumerate(foreign):
        block.experts[e] = expert  # adopted: the same Linear modules, no copy
    assert block.experts[0].gate_proj is foreign[0].gate_proj
    assert pack_experts(block) == 1
    _assert_packed(block.experts)
    h = _hidden()
    out = block(h)
    for e, expert in enumerate(foreign):  # the foreign modules see the packed storage
        assert expert.up_proj.weight.data_ptr() == block.experts.stacked_weights()[1][e].data_ptr()
    assert_close(out, _lladamoe_reference(block, h), rel=FP32_TOL)
    with pytest.raises(TypeError, match="Linear lacks gate_proj, up_proj, down_proj"):
        block.experts[0] = nn.Linear(D, D)


def test_lora_wrapped_experts_run_through_their_adapters():
    peft = pytest.importorskip("peft")
    block = _llada2()
    h = _hidden()
    block(h)  # packed before the adapters arrive
    config = peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=r".*experts\.\d+\.(gate|up|down)_proj"
    )
    tuned = peft.inject_adapter_in_model(config, block)
    assert type(tuned.experts[0].gate_proj) is not nn.Linear
    for name, param in tuned.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                param.copy_(torch.randn(param.shape) * 0.3)  # B starts at 0: make it count
    with torch.no_grad():
        without = _llada2_reference(block, h)
    out = tuned(h)
    assert (out - without.float()).abs().max() > 1e-3  # the adapters change the output
    out.sum().backward()
    lora_grads = [p.grad for n, p in tuned.named_parameters() if "lora_A" in n]
    assert lora_grads and any(g is not None and g.abs().sum() > 0 for g in lora_grads)
    merged = _merged_llada2(tuned)
    assert_close(out, _llada2_reference(merged, h), rel=FP32_TOL)


def _merged_llada2(tuned) -> LLaDA2SparseMoe:
    """A plain block whose expert weights are ``W + scale B A`` of the LoRA-wrapped one."""
    merged = _llada2()
    with torch.no_grad():
        merged.gate.weight.copy_(tuned.gate.weight)
        merged.gate.expert_bias.copy_(tuned.gate.expert_bias)
        merged.shared_experts.load_state_dict(tuned.shared_experts.state_dict())
        for ours, theirs in zip(merged.experts, tuned.experts, strict=True):
            for name in ("gate_proj", "up_proj", "down_proj"):
                layer = getattr(theirs, name)
                delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
                getattr(ours, name).weight.copy_(
                    layer.base_layer.weight + layer.scaling["default"] * delta
                )
    return merged


def test_gradients_reach_hidden_states_and_expert_weights():
    """The trainer back-propagates through the block to attention (d h), and full fine-tuning
    to the experts; both against float64 autograd through the reference layer."""
    block = _lladamoe()
    h = _hidden().requires_grad_(True)
    h64 = h.detach().double().requires_grad_(True)
    experts64 = tuple(w.double().requires_grad_(True) for w in _experts(block))
    upstream = randn(h.shape, seed=4)
    block(h).backward(upstream)
    ref = reference.lladamoe_moe_layer(
        h64, block.gate.weight.detach(), experts64, block.expert_bias, top_k=block.top_k
    )
    ref.backward(upstream.double())
    assert_close(h.grad, h64.grad, rel=GRAD_TOL, what="dh")
    grad_up = torch.stack([e.up_proj.weight.grad for e in block.experts])
    assert_close(grad_up, experts64[1].grad, rel=GRAD_TOL, what="d up_proj")


def test_a_pack_made_under_inference_mode_stays_usable_by_autograd():
    block = _lladamoe()
    foreign = [_randomise(_ForeignExpert(), seed=e) for e in range(EXPERTS)]
    for e, expert in enumerate(foreign):
        block.experts[e] = expert
    h = _hidden()
    with torch.inference_mode():
        block(h)  # packs the adopted experts here
    _assert_packed(block.experts)
    assert not any(p.is_inference() for p in block.experts.parameters())
    block.requires_grad_(False)
    h = h.clone().requires_grad_(True)
    block(h).sum().backward()
    assert torch.isfinite(h.grad).all()


def test_autocast_runs_the_experts_in_its_dtype():
    block = _llada2()
    h = _hidden()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(h)
    assert out.dtype == torch.bfloat16
    assert_close(out, _llada2_reference(block, h), rel=BF16_TOL)


def test_frozen_experts_use_the_packs_under_autograd():
    block = _llada2()
    block.requires_grad_(False)
    h = _hidden().requires_grad_(True)
    block(h).sum().backward()
    _assert_packed(block.experts)
    assert h.grad is not None and torch.isfinite(h.grad).all()


def test_expert_mlp_is_swiglu():
    expert = _randomise(ExpertMLP(D, INNER), seed=5)
    x = randn((4, D), seed=6)
    expected = reference.swiglu_mlp(
        x,
        expert.gate_proj.weight.detach(),
        expert.up_proj.weight.detach(),
        expert.down_proj.weight.detach(),
    )
    assert_close(expert(x), expected, rel=FP32_TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", ["llada2", "lladamoe"])
def test_blocks_match_published_code(family, dtype, tmp_path):
    """Skipped unless ``MOSA_LLADA2_REFERENCE`` / ``MOSA_LLADAMOE_REFERENCE`` name a local copy
    of ``modeling_llada2_moe.py`` / ``modeling_lladamoe.py``; the published block runs in
    ``MOSA_REFERENCE_PYTHON`` (transformers 4.57), see ``test_model_parity.py``."""
    modeling_py = os.environ.get(PUBLISHED_ENV[family])
    if not modeling_py:
        pytest.skip(f"set {PUBLISHED_ENV[family]} to a local copy of the published modeling file")
    block = (_llada2() if family == "llada2" else _lladamoe()).to(dtype)
    h = _hidden(length=7, dtype=dtype)
    state = {k: v.contiguous() for k, v in block.state_dict().items()}
    save_file({**state, "hidden": h}, str(tmp_path / "state.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(PUBLISHED_CONFIG[family]))
    done = subprocess.run(
        [
            os.environ.get("MOSA_REFERENCE_PYTHON", sys.executable),
            str(Path(__file__).with_name("reference_moe_block.py")),
            family,
            modeling_py,
            str(tmp_path / "config.json"),
            str(tmp_path / "state.safetensors"),
            str(tmp_path / "out.safetensors"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    published = load_file(str(tmp_path / "out.safetensors"))["out"]
    with torch.no_grad():
        out = block(h)
    assert_close(out, published, rel=FP32_TOL if dtype == torch.float32 else BF16_TOL)

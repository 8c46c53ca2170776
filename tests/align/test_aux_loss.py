"""A model output's auxiliary loss (``DiffusionLMOutput.aux_loss``, an MoE router's load
balancing) reaches the trainer's loss and gradient."""

from __future__ import annotations

import torch

from mosa.align.trainer import _Models
from mosa.models import DiffusionLMOutput


class _AuxModel(torch.nn.Module):
    """A policy whose output carries ``weight ** 2`` as its auxiliary loss."""

    def __init__(self, aux: bool):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64))
        self.aux = aux

    def forward(self, input_ids, attention_mask, block_length=None):
        hidden = torch.randn(*input_ids.shape, 4, dtype=torch.float64)
        return DiffusionLMOutput(hidden, aux_loss=self.weight**2 if self.aux else None)


def _models(trained: torch.nn.Module) -> _Models:
    models = _Models.__new__(_Models)  # the forward bookkeeping only: no checkpoint to load
    models.trained, models._aux_losses = trained, []
    return models


def test_the_policy_forwards_aux_losses_are_added_to_the_loss_and_its_gradient():
    trained = _AuxModel(aux=True)
    models = _models(trained)
    ids = torch.randint(0, 8, (3, 5))
    for _ in range(2):  # the objective's forward and the benign regulariser's
        assert models.policy(ids, None).shape == (3, 5, 4)
    aux = models.take_aux_loss(rows=3)
    assert torch.allclose(aux, torch.tensor(3 * 2 * 1.5**2, dtype=torch.float64))
    aux.backward()
    assert torch.allclose(trained.weight.grad, torch.tensor(3 * 2 * 2 * 1.5, dtype=torch.float64))
    assert models.take_aux_loss(rows=3) == 0.0  # taken once


def test_a_model_without_aux_loss_adds_nothing():
    models = _models(_AuxModel(aux=False))
    models.policy(torch.randint(0, 8, (2, 3)), None)
    assert models.take_aux_loss(rows=2) == 0.0


# The MoE families' router load-balancing loss -----------------------------------------------

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_checkpoints import padded_batch, tiny_model  # noqa: E402

from mosa.models.moe import KeptRouting, LLaDA2SparseMoe  # noqa: E402
from mosa_kernels.reference import moe as plain_moe  # noqa: E402


def _router_inputs(model):
    """Each MoE block's input ``h [B, L, d]`` of the next forward, in layer order."""
    seen = []
    for module in model.modules():
        if isinstance(module, KeptRouting):
            module.register_forward_hook(lambda m, args, out: seen.append((m, args[0])))
    return seen


def _plain_balancing(block, h, valid) -> torch.Tensor:
    """``E * sum_e f_e P_e`` token by token in float64, the valid tokens only."""
    flat = h.reshape(-1, h.shape[-1]).double()
    if isinstance(block, LLaDA2SparseMoe):
        gate = block.gate
        logits = flat @ gate.weight.double().T
        ids, _ = plain_moe.route_grouped_sigmoid(
            logits, gate.expert_bias, top_k=gate.top_k, n_group=gate.n_group,
            topk_group=gate.topk_group, routed_scaling_factor=gate.routed_scaling_factor,
        )  # fmt: skip
        scores = torch.sigmoid(logits)
        probs = scores / scores.sum(dim=-1, keepdim=True)
    else:
        logits = flat @ block.gate.weight.double().T
        ids, _ = plain_moe.route_softmax(logits, top_k=block.top_k, expert_bias=block.expert_bias)
        probs = torch.softmax(logits, dim=-1)
    num_experts, top_k = probs.shape[1], ids.shape[1]
    tokens = [n for n in range(flat.shape[0]) if valid[n]]
    total = 0.0
    for e in range(num_experts):
        share = sum(int(ids[n, j]) == e for n in tokens for j in range(top_k)) / (
            len(tokens) * top_k
        )
        total = total + share * sum(probs[n, e] for n in tokens) / len(tokens)
    return num_experts * total


@pytest.mark.parametrize("family", ["llada2", "llada_moe"])
def test_router_aux_loss_is_the_load_balancing_formula_over_valid_tokens(family):
    model = tiny_model(family).double().train()
    assert model.keep_router_outputs() == 2
    inputs = _router_inputs(model)
    ids, mask = padded_batch([7, 3, 5], total=7, seed=4)
    out = model(ids, mask)
    valid = mask.reshape(-1).bool()
    want = sum(_plain_balancing(block, h, valid) for block, h in inputs) / len(inputs)
    coef = model.config.router_aux_loss_coef
    assert coef == {"llada2": 0.001, "llada_moe": 0.01}[family]
    # LLaDA2's router runs in fp32 whatever the model's dtype (as published).
    rtol = {"llada2": 1e-5, "llada_moe": 1e-10}[family]
    torch.testing.assert_close(out.aux_loss.double(), coef * want, rtol=rtol, atol=0)
    # The padding's routing is left out: counting it changes the loss.
    everything = torch.ones_like(valid)
    padded = sum(_plain_balancing(block, h, everything) for block, h in inputs) / len(inputs)
    assert abs(float((padded - want).detach())) > 1e-6
    # It reaches the routers' weights (through the probabilities).
    gate = next(m for m in model.modules() if isinstance(m, KeptRouting)).gate
    (grad,) = torch.autograd.grad(out.aux_loss, gate.weight)
    assert grad.abs().max() > 0


@pytest.mark.parametrize("family", ["llada2", "llada_moe"])
def test_no_router_output_is_kept_unless_asked(family):
    model = tiny_model(family).train()
    blocks = [m for m in model.modules() if isinstance(m, KeptRouting)]
    ids = torch.randint(0, 120, (2, 6))
    assert model(ids).aux_loss is None
    assert all(block.routing is None and not block.keep_routing for block in blocks)
    model.keep_router_outputs()
    with torch.no_grad():  # a reference pass: nothing kept either
        assert model(ids).aux_loss is None
    assert all(block.routing is None for block in blocks)
    assert model(ids).aux_loss is not None
    assert all(block.routing is None for block in blocks)  # released after the forward
    model.keep_router_outputs(False)
    assert model(ids).aux_loss is None


def test_lora_on_the_routed_experts_takes_the_module_path_and_matches_the_plain_block():
    import peft

    model = tiny_model("llada2").double()
    wrapped = peft.get_peft_model(
        model, peft.LoraConfig(r=3, lora_alpha=6, target_modules=model.lora_targets(experts=True))
    )
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    block = model.model.layers[1].mlp
    assert not block.experts._all_plain_linear()  # LoRA wrappers: the per-expert module path

    def effective(linear):  # W + scale * B A
        return linear.base_layer.weight + linear.get_delta_weight("default")

    experts = tuple(
        torch.stack([effective(getattr(e, name)) for e in block.experts])
        for name in ("gate_proj", "up_proj", "down_proj")
    )
    shared = tuple(
        effective(getattr(block.shared_experts, name))
        for name in ("gate_proj", "up_proj", "down_proj")
    )
    h = torch.randn(2, 5, model.config.hidden_size, dtype=torch.float64, generator=generator)
    gate = block.gate
    want = plain_moe.llada2_moe_layer(
        h, gate.weight, gate.expert_bias, experts, shared, top_k=gate.top_k,
        n_group=gate.n_group, topk_group=gate.topk_group,
        routed_scaling_factor=gate.routed_scaling_factor,
    )  # fmt: skip
    # The router's logits are fp32 in the model (as published), float64 in the plain block.
    torch.testing.assert_close(block(h), want, rtol=1e-5, atol=1e-6)
    with wrapped.disable_adapter():  # the reference pass: the experts without LoRA
        assert (block(h) - want).abs().max() > 1e-3
    names = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert any(".experts." in n for n in names) and not any("gate.weight" in n for n in names)


def test_lora_experts_needs_routed_experts():
    with pytest.raises(ValueError, match="lora_experts=True wraps routed experts"):
        tiny_model("llada").lora_targets(experts=True)
    assert tiny_model("llada").lora_targets() == tiny_model("llada").lora_target_modules

"""LoRA through peft: targets the checkpoint's module names, adapters round-trip in peft format."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tiny_checkpoints import TINY_CONFIGS

from mosa.models import load_model

peft = pytest.importorskip("peft")

SWIGLU = ("gate_proj", "up_proj", "down_proj")


def adapted_modules(family: str) -> set[str]:
    """The modules LoRA adapts, spelled out for the tiny configs: every attention and dense MLP
    projection, and the shared experts of the MoE layers, never the routers or the routed
    experts (nor the output head)."""
    config = TINY_CONFIGS[family]
    if family == "llada":
        block = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
        return {
            f"model.transformer.blocks.{i}.{p}" for i in range(config["n_layers"]) for p in block
        }
    attention = {
        "dream": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
        "llada2": ("attention.query_key_value", "attention.dense"),
        "llada_moe": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    }[family]  # fmt: skip
    names = set()
    for i in range(config["num_hidden_layers"]):
        if family == "llada2" and i >= config["first_k_dense_replace"]:
            mlp = "mlp.shared_experts"
        elif family == "llada_moe" and config["moe_layer_freq"][i]:
            mlp = "shared_expert"
        else:
            mlp = "mlp"
        names |= {f"model.layers.{i}.{n}" for n in attention}
        names |= {f"model.layers.{i}.{mlp}.{p}" for p in SWIGLU}
    return names


def test_adapter_round_trip(tmp_path, family, checkpoint):
    base = load_model(checkpoint, device="cpu")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=base.lora_target_modules)
    tuned = peft.get_peft_model(base, config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    ids = torch.randint(0, 120, (2, 9), generator=generator)
    with torch.no_grad():
        expected = tuned(ids).hidden_states
        with tuned.disable_adapter():
            assert not torch.allclose(tuned(ids).hidden_states, expected)
    tuned.save_pretrained(tmp_path / "adapter")

    keys = set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert keys == {
        f"base_model.model.{name}.lora_{ab}.weight"
        for name in adapted_modules(family)
        for ab in "AB"
    }

    reloaded = peft.PeftModel.from_pretrained(
        load_model(checkpoint, device="cpu"), tmp_path / "adapter"
    )
    assert reloaded.peft_config["default"].base_model_name_or_path == str(checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).hidden_states, expected, rtol=0, atol=0)


def test_save_pretrained_refuses_a_model_holding_adapters(tmp_path, model):
    peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=model.lora_target_modules))
    with pytest.raises(ValueError, match="merge adapters first"):
        model.save_pretrained(tmp_path / "out")

"""LoRA through peft: targets the checkpoint's module names, adapters round-trip in peft format."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file

from mosa.models import load_model

peft = pytest.importorskip("peft")

PROJECTIONS = {
    "llada": ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"),
    "dream": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}


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
    blocks = "model.transformer.blocks" if family == "llada" else "model.layers"
    pattern = rf"base_model\.model\.{blocks}\.\d+\.(\w+\.)?(\w+)\.lora_[AB]\.weight"
    assert {re.fullmatch(pattern, k).group(2) for k in keys} == set(PROJECTIONS[family])
    assert len(keys) == 2 * len(PROJECTIONS[family]) * len(base.blocks)  # the head is not adapted

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

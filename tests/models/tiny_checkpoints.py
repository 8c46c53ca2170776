"""Tiny random models of every family, and checkpoint folders in the published on-disk format.

The folders are written here with ``safetensors`` directly (config.json + two shards +
``model.safetensors.index.json``), not with ``save_pretrained``, so loading is tested against
the format rather than against this package's own writer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from mosa.models import DREAM_7B, LLADA2_MINI, LLADA_8B, LLADA_MOE_7B, build_model

TINY_CONFIGS = {
    "llada": dict(
        LLADA_8B,
        d_model=64,
        n_heads=2,
        n_kv_heads=2,
        n_layers=2,
        mlp_hidden_size=96,
        vocab_size=120,
        embedding_size=128,
        max_sequence_length=64,
        mask_token_id=126,
        eos_token_id=125,
        pad_token_id=125,
    ),
    "dream": dict(
        DREAM_7B,
        hidden_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        intermediate_size=96,
        vocab_size=128,
        max_position_embeddings=64,
        mask_token_id=126,
        pad_token_id=125,
        eos_token_id=125,
        bos_token_id=125,
    ),
    # Layer 0 dense, layers 1-2 MoE; head_dim 32 (not hidden / heads) so the Triton kernel
    # takes it, half of it rotated; biases on, unlike LLaDA2.0-mini, so their names are tested.
    "llada2": dict(
        LLADA2_MINI,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_hidden_layers=3,
        first_k_dense_replace=1,
        intermediate_size=96,
        moe_intermediate_size=24,
        num_experts=8,
        num_experts_per_tok=2,
        n_group=4,
        topk_group=2,
        num_shared_experts=1,
        use_bias=True,
        use_qkv_bias=True,
        vocab_size=128,
        max_position_embeddings=64,
        mask_token_id=126,
        pad_token_id=125,
        eos_token_id=125,
    ),
    # Layer 0 dense, layers 1-2 MoE with a shared expert; GQA, half the head rotated, q/k/v
    # clipped where the random activations reach, the expert-bias buffer and biases on.
    "llada_moe": dict(
        LLADA_MOE_7B,
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_hidden_layers=3,
        moe_layer_freq=[0, 1, 1],
        dense_intermediate_size=96,
        expert_intermediate_size=24,
        shared_expert_intermediate_size=32,
        num_experts=8,
        num_experts_per_tok=2,
        partial_rotary_factor=0.5,
        clip_qkv=1.5,
        attention_bias=True,
        moe_router_enable_expert_bias=True,
        vocab_size=128,
        max_position_embeddings=64,
        mask_token_id=126,
        pad_token_id=125,
        eos_token_id=125,
    ),
}


def dream_config_over(tokenizer) -> dict:
    """A small Dream config over ``tokenizer``'s vocabulary and special tokens (the tiny
    model's, say), so its prompts and chat template serve a Dream model too."""
    return dict(
        DREAM_7B, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, intermediate_size=96, vocab_size=len(tokenizer),
        max_position_embeddings=128, mask_token_id=tokenizer.mask_token_id,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip


def config_over(family: str, tokenizer) -> dict:
    """``family``'s tiny config over ``tokenizer``'s vocabulary and special tokens (the
    embedded tiny model's, say), for LLaDA2 and LLaDA-MoE, whose configs name no
    ``embedding_size``."""
    return dict(
        TINY_CONFIGS[family], vocab_size=len(tokenizer), max_position_embeddings=128,
        mask_token_id=tokenizer.mask_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip


def random_weights(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """fp32 weights at scales that make attention patterns and logits far from uniform."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        noise = torch.randn(tensor.shape, generator=generator)
        if "norm" in name or name.endswith("ln_f.weight"):
            state[name] = 1.0 + 0.2 * noise
        elif name.endswith("bias"):
            state[name] = 0.2 * noise
        elif tensor.dim() == 2 and any(e in name for e in ("wte", "embed_tokens", "word_emb")):
            state[name] = noise
        else:
            state[name] = noise / math.sqrt(tensor.shape[1])
    return state


def write_sharded(
    folder: Path, config: dict, state: dict[str, torch.Tensor], shards: int = 2
) -> Path:
    """config.json + ``shards`` safetensors shards + index, as Hugging Face writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    names = list(state)
    per_shard = math.ceil(len(names) / shards)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n].contiguous() for n in names[i * per_shard : (i + 1) * per_shard]}
        save_file(part, str(folder / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    model = build_model(TINY_CONFIGS[family], device="cpu")
    model.load_state_dict(random_weights(model, seed))
    return model.eval()


def lora_model(family: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(base, peft model)``: a tiny model with LoRA whose B matrices are random, so the
    policy (adapter on) differs from the reference (adapter off)."""
    import peft

    base = tiny_model(family, seed=3)
    model = peft.get_peft_model(
        base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=base.lora_target_modules)
    )
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return base, model


def padded_batch(
    lengths: list[int], total: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts of ``lengths``, left padded to ``total`` with id 125 (the tiny pad id)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), total), 125)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, total - n :] = torch.randint(0, 120, (n,), generator=generator)
        mask[row, total - n :] = 1
    return ids, mask


def tiny_family_folder(folder: Path, family: str, seed: int = 0) -> Path:
    """A model folder of ``family``'s tiny random model over the embedded tiny model's
    tokenizer and chat template (``config_over``), weights in one shard: a folder ``mosa
    align`` and ``load_model`` take like a published checkpoint's."""
    import shutil

    import mosa.tiny
    from mosa.text.prompts import load_tokenizer

    source = mosa.tiny.path()
    config = config_over(family, load_tokenizer(source))
    model = build_model(config, device="cpu")
    write_sharded(folder, config, random_weights(model, seed), shards=1)
    for path in source.iterdir():
        if path.name.startswith(("tokenizer", "chat_template")):
            shutil.copyfile(path, folder / path.name)
    return folder


def tiny_sentence_args(folder: Path) -> list[str]:
    """``mosa align``'s ``--refusals`` / ``--harmful`` for the embedded tiny model's sentence
    sets (in its vocabulary), written as JSON lists into ``folder``."""
    import mosa.tiny

    sentences = mosa.tiny.align_sentences()
    args = []
    for flag, texts in (("--refusals", sentences.refusals), ("--harmful", sentences.harmful)):
        path = folder / f"{flag[2:]}.json"
        path.write_text(json.dumps(list(texts)))
        args += [flag, str(path)]
    return args

"""The architecture fields of the published ``config.json`` files, for shape-only builds.

``build_model("llada-8b", device="meta")`` gives the real module tree and shapes without
weights (benchmarks, memory planning); on a real device it fills random weights.
"""

from __future__ import annotations

from typing import Any

LLADA_8B: dict[str, Any] = {
    # GSAI-ML/LLaDA-8B-Base, LLaDA-8B-Instruct and LLaDA-1.5 share this architecture.
    "architectures": ["LLaDAModelLM"],
    "model_type": "llada",
    "activation_type": "silu",
    "alibi": False,
    "attention_dropout": 0.0,
    "attention_layer_norm": False,
    "bias_for_layer_norm": False,
    "block_group_size": 1,
    "block_type": "llama",
    "d_model": 4096,
    "embedding_dropout": 0.0,
    "embedding_size": 126464,
    "eos_token_id": 126081,
    "include_bias": False,
    "include_qkv_bias": False,
    "input_emb_norm": False,
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "mask_token_id": 126336,
    "max_sequence_length": 4096,
    "mlp_hidden_size": 12288,
    "mlp_ratio": 4,
    "multi_query_attention": None,
    "n_heads": 32,
    "n_kv_heads": 32,
    "n_layers": 32,
    "pad_token_id": 126081,
    "residual_dropout": 0.0,
    "rms_norm_eps": 1e-05,
    "rope": True,
    "rope_full_precision": True,
    "rope_theta": 500000.0,
    "scale_logits": False,
    "use_cache": False,
    "vocab_size": 126464,
    "weight_tying": False,
}

DREAM_7B: dict[str, Any] = {
    # Dream-org/Dream-v0-Instruct-7B (and -Base-7B): Qwen2.5-7B shapes.
    "architectures": ["DreamModel"],
    "model_type": "Dream",
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "mask_token_id": 151666,
    "max_position_embeddings": 131072,
    "max_window_layers": 28,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "pad_token_id": 151643,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "use_cache": False,
    "use_sliding_window": False,
    "vocab_size": 152064,
}

LLADA2_MINI: dict[str, Any] = {
    # inclusionAI/LLaDA2.0-mini (16B, 1.4B active); LLaDA2.1-mini has the same architecture.
    # From the published config.json as quoted in public code (two copies agree); use_bias and
    # eos_token_id are not in those quotes: False (no dense bias in the checkpoint) and the
    # published generate's EOS. The mask id is generate's default (mask_token_id).
    "architectures": ["LLaDA2MoeModelLM"],
    "model_type": "llada2_moe",
    "eos_token_id": 156892,
    "first_k_dense_replace": 1,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 5120,
    "max_position_embeddings": 32768,
    "moe_intermediate_size": 512,
    "moe_router_enable_expert_bias": True,
    "n_group": 8,
    "norm_head": False,
    "norm_topk_prob": True,
    "num_attention_heads": 16,
    "num_experts": 256,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 20,
    "num_key_value_heads": 4,
    "num_shared_experts": 1,
    "output_router_logits": False,
    "pad_token_id": 156892,
    "partial_rotary_factor": 0.5,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 600000,
    "routed_scaling_factor": 2.5,
    "score_function": "sigmoid",
    "tie_word_embeddings": False,
    "topk_group": 4,
    "use_bias": False,
    "use_qk_norm": True,
    "use_qkv_bias": False,
    "vocab_size": 157184,
}

LLADA_MOE_7B: dict[str, Any] = {
    # inclusionAI/LLaDA-MoE-7B-A1B-Base and -Instruct (7B, 1.4B active). The shapes, experts,
    # rope_theta, qk_layernorm and moe_layer_freq are the published ones as quoted in public
    # code; partial_rotary_factor, rms_norm_eps, the router flags and the EOS / pad ids
    # (LLaDA2's tokenizer) are not in those quotes and are assumed. The mask id is the model
    # card's generate default (mask_token_id).
    "architectures": ["LLaDAMoEModelLM"],
    "model_type": "llada",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "clip_qkv": None,
    "dense_intermediate_size": 8192,
    "eos_token_id": 156892,
    "expert_intermediate_size": 1024,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "max_position_embeddings": 8192,
    "moe_layer_freq": [1] * 16,
    "moe_router_enable_expert_bias": None,
    "norm_topk_prob": None,
    "num_attention_heads": 16,
    "num_experts": 64,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 16,
    "num_key_value_heads": 16,
    "pad_token_id": 156892,
    "partial_rotary_factor": 1.0,
    "qk_layernorm": True,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 50000,
    "router_aux_loss_coef": 0.01,
    "shared_expert_intermediate_size": None,
    "tie_word_embeddings": False,
    "use_cache": False,
    "vocab_size": 157184,
}

PRESETS: dict[str, dict[str, Any]] = {
    "llada-8b": LLADA_8B,
    "dream-7b": DREAM_7B,
    "llada2-mini": LLADA2_MINI,
    "llada-moe-7b": LLADA_MOE_7B,
}

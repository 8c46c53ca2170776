"""Checkpoint folders: parameter names, bit-exact loading, saving, presets, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_checkpoints import TINY_CONFIGS, tiny_model, write_sharded

import mosa
from mosa.models import (
    FAMILIES,
    DreamModel,
    LLaDA2Model,
    LLaDAModel,
    LLaDAMoEModel,
    build_model,
    load_model,
)  # fmt: skip


def _swiglu(prefix: str) -> set[str]:
    return {f"{prefix}.{p}_proj.weight" for p in ("gate", "up", "down")}


def _experts(prefix: str, experts: int) -> set[str]:
    return set().union(*(_swiglu(f"{prefix}.experts.{e}") for e in range(experts)))


def published_names(family: str, config: dict) -> set[str]:
    """The tensor names of the published checkpoints (docs/DESIGN.md §5), spelled out by hand
    for the tiny configs' options (LLaDA2's and LLaDA-MoE's with biases, QK-norm, a dense
    first layer, shared experts and the expert-bias buffers)."""
    if family == "llada":
        block = [
            "attn_norm",
            "ff_norm",
            "q_proj",
            "k_proj",
            "v_proj",
            "attn_out",
            "ff_proj",
            "up_proj",
            "ff_out",
        ]
        names = {f"model.transformer.{n}.weight" for n in ("wte", "ln_f", "ff_out")}
        for i in range(config["n_layers"]):
            names |= {f"model.transformer.blocks.{i}.{n}.weight" for n in block}
        return names
    if family == "llada2":
        names = {"model.word_embeddings.weight", "model.norm.weight", "lm_head.weight"}
        for i in range(config["num_hidden_layers"]):
            prefix = f"model.layers.{i}"
            names |= {f"{prefix}.attention.{p}.{kind}" for p in ("query_key_value", "dense")
                      for kind in ("weight", "bias")}  # fmt: skip
            names |= {f"{prefix}.attention.{n}_layernorm.weight" for n in ("query", "key")}
            names |= {
                f"{prefix}.{n}.weight" for n in ("input_layernorm", "post_attention_layernorm")
            }
            if i < config["first_k_dense_replace"]:
                names |= _swiglu(f"{prefix}.mlp")
            else:
                names |= {f"{prefix}.mlp.gate.weight", f"{prefix}.mlp.gate.expert_bias"}
                names |= _experts(f"{prefix}.mlp", config["num_experts"])
                names |= _swiglu(f"{prefix}.mlp.shared_experts")
        return names
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{i}"
        names |= {f"{prefix}.input_layernorm.weight", f"{prefix}.post_attention_layernorm.weight"}
        if family == "dream":
            names |= {
                f"{prefix}.self_attn.{p}_proj.{kind}" for p in "qkv" for kind in ("weight", "bias")
            }
            names |= {f"{prefix}.self_attn.o_proj.weight"}
            names |= _swiglu(f"{prefix}.mlp")
            continue
        names |= {
            f"{prefix}.self_attn.{p}_proj.{kind}" for p in "qkvo" for kind in ("weight", "bias")
        }
        names |= {f"{prefix}.self_attn.{n}_norm.weight" for n in "qk"}
        if config["moe_layer_freq"][i]:
            names |= {f"{prefix}.mlp.gate.weight", f"{prefix}.mlp.expert_bias"}
            names |= _experts(f"{prefix}.mlp", config["num_experts"])
            names |= _swiglu(f"{prefix}.shared_expert")
        else:
            names |= _swiglu(f"{prefix}.mlp")
    return names


def test_parameter_names_are_the_published_ones(family, model):
    assert set(model.state_dict()) == published_names(family, TINY_CONFIGS[family])


@pytest.mark.parametrize(
    ("preset", "cls", "params", "shapes"),
    [
        (
            "llada-8b",
            LLaDAModel,
            8_015_581_184,
            {
                "model.transformer.wte.weight": (126464, 4096),
                "model.transformer.blocks.31.ff_proj.weight": (12288, 4096),
                "model.transformer.ff_out.weight": (126464, 4096),
            },
        ),
        (
            "dream-7b",
            DreamModel,
            7_615_616_512,
            {
                "model.layers.27.self_attn.k_proj.weight": (512, 3584),
                "model.layers.0.self_attn.q_proj.bias": (3584,),
                "model.layers.0.mlp.down_proj.weight": (3584, 18944),
                "lm_head.weight": (152064, 3584),
            },
        ),
        (
            "llada2-mini",
            LLaDA2Model,
            16_255_638_528,
            {
                "model.word_embeddings.weight": (157184, 2048),
                "model.layers.0.attention.query_key_value.weight": ((16 + 2 * 4) * 128, 2048),
                "model.layers.0.attention.query_layernorm.weight": (128,),
                "model.layers.0.mlp.down_proj.weight": (2048, 5120),
                "model.layers.19.mlp.gate.weight": (256, 2048),
                "model.layers.19.mlp.experts.255.up_proj.weight": (512, 2048),
                "model.layers.1.mlp.shared_experts.down_proj.weight": (2048, 512),
                "lm_head.weight": (157184, 2048),
            },
        ),
        (
            "llada-moe-7b",
            LLaDAMoEModel,
            7_356_880_896,
            {
                "model.embed_tokens.weight": (157184, 2048),
                "model.layers.15.self_attn.k_norm.weight": (128,),
                "model.layers.0.mlp.gate.weight": (64, 2048),
                "model.layers.0.mlp.experts.63.down_proj.weight": (2048, 1024),
                "lm_head.weight": (157184, 2048),
            },
        ),
    ],
)
def test_presets_build_the_real_shapes_on_meta(preset, cls, params, shapes):
    model = build_model(preset, dtype=torch.bfloat16)
    assert isinstance(model, cls) and model.device.type == "meta" and model.dtype == torch.bfloat16
    assert sum(p.numel() for p in model.parameters()) == params
    state = model.state_dict()
    for name, shape in shapes.items():
        assert tuple(state[name].shape) == shape
    assert model.lm_head_weight.shape[0] == model.vocab_size


def test_token_ids_and_head(family, model):
    config = TINY_CONFIGS[family]
    assert (model.mask_token_id, model.eos_token_id) == (
        config["mask_token_id"],
        config["eos_token_id"],
    )
    head = model.model.transformer.ff_out.weight if family == "llada" else model.lm_head.weight
    assert model.lm_head_weight is head


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sharded_folder_loads_bit_exactly(tmp_path, family, model, dtype):
    state = {k: v.to(dtype) for k, v in model.state_dict().items()}
    folder = write_sharded(tmp_path / "ckpt", TINY_CONFIGS[family], state)
    loaded = load_model(folder, dtype=dtype, device="cpu")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.name_or_path == str(folder)
    for name, tensor in loaded.state_dict().items():
        assert tensor.dtype == dtype and torch.equal(tensor, state[name]), name
    assert all(isinstance(p, torch.nn.Parameter) for p in loaded.parameters())


def test_top_level_load_model_defaults(tmp_path, family, model):
    """One model.safetensors; the defaults: the GPU in bf16 when there is one, else fp32 CPU."""
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    folder = tmp_path / "single"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_CONFIGS[family]))
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    loaded = mosa.load_model(folder)
    on_gpu = torch.cuda.is_available()
    assert loaded.device.type == ("cuda" if on_gpu else "cpu")
    assert loaded.dtype == (torch.bfloat16 if on_gpu else torch.float32)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor.cpu().float(), state[name].float()), name


def test_save_pretrained_round_trip(tmp_path, family, model):
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model-00001-of-00009.safetensors").write_bytes(b"stale")
    model.save_pretrained(folder, max_shard_size=40_000)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and sorted(p.name for p in folder.glob("model-*.safetensors")) == shards
    assert (folder / "tokenizer.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # no temporary folders left
    config = json.loads((folder / "config.json").read_text())
    assert {k: config[k] for k in TINY_CONFIGS[family]} == TINY_CONFIGS[family]
    assert config["torch_dtype"] == "float32"
    loaded = load_model(folder, device="cpu")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

    model.save_pretrained(folder)  # overwrite with one file
    assert [p.name for p in folder.glob("*.safetensors")] == ["model.safetensors"]
    assert not (folder / "model.safetensors.index.json").exists()
    assert set(load_file(folder / "model.safetensors")) == set(model.state_dict())


def _edit_index(folder, edit):
    path = folder / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    edit(index["weight_map"])
    path.write_text(json.dumps(index))


def test_missing_shard_is_named(checkpoint):
    (checkpoint / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ValueError, match="shard model-00002-of-00002.safetensors .* is missing"):
        load_model(checkpoint, device="cpu")


def test_unknown_key_is_named(checkpoint):
    extra = checkpoint / "model-00003-of-00003.safetensors"
    save_file({"model.bogus.weight": torch.zeros(2)}, str(extra))
    _edit_index(checkpoint, lambda m: m.update({"model.bogus.weight": extra.name}))
    with pytest.raises(ValueError, match="does not have: model.bogus.weight"):
        load_model(checkpoint, device="cpu")


def test_missing_key_is_named(checkpoint):
    _edit_index(checkpoint, lambda m: m.pop(next(iter(m))))
    with pytest.raises(ValueError, match="lacks tensors the model needs"):
        load_model(checkpoint, device="cpu")


def test_index_entry_absent_from_its_shard_is_named(checkpoint):
    def move(weight_map):
        name = next(n for n, s in weight_map.items() if s.startswith("model-00001"))
        weight_map[name] = "model-00002-of-00002.safetensors"

    _edit_index(checkpoint, move)
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors lacks tensor"):
        load_model(checkpoint, device="cpu")


def test_shape_mismatch_is_named(tmp_path, family, model):
    config = dict(TINY_CONFIGS[family])
    config["embedding_size" if family == "llada" else "vocab_size"] = 256
    folder = write_sharded(tmp_path / "ckpt", config, model.state_dict())
    with pytest.raises(
        ValueError, match=r"has shape \(128, \d+\) but the config gives \(256, \d+\)"
    ):
        load_model(folder, device="cpu")


def test_unknown_model_type_is_named(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    config.update(model_type="olmoe", architectures=["OlmoeForCausalLM"])
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown model type 'olmoe'"):
        load_model(checkpoint, device="cpu")


@pytest.mark.parametrize(
    ("family", "setting", "value"),
    [
        ("llada", "block_type", "sequential"),
        ("llada", "rope", False),
        ("dream", "rope_scaling", {"type": "yarn"}),
        ("llada2", "hidden_act", "gelu"),
        ("llada_moe", "rope_scaling", {"type": "linear", "factor": 2.0}),
    ],
)
def test_unsupported_setting_is_refused(tmp_path, family, setting, value):
    config = dict(TINY_CONFIGS[family], **{setting: value})
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{setting} is .* implements only"):
        load_model(tmp_path, device="cpu")


def test_malformed_files_are_refused(tmp_path, checkpoint):
    _edit_index(checkpoint, lambda m: m.update({k: "../outside.safetensors" for k in m}))
    with pytest.raises(ValueError, match="inside the checkpoint folder"):
        load_model(checkpoint, device="cpu")
    (checkpoint / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_model(checkpoint, device="cpu")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(TINY_CONFIGS["llada"]))
    (pickled / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(
        ValueError, match="pickle files are never loaded.*convert them to safetensors"
    ):
        load_model(pickled, device="cpu")
    (pickled / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(pickled, device="cpu")


def test_bad_config_values_are_named(tmp_path):
    config = dict(TINY_CONFIGS["dream"], num_key_value_heads=3)
    with pytest.raises(
        ValueError, match="num_attention_heads=4 is not a multiple of num_key_value_heads=3"
    ):
        build_model(config)
    with pytest.raises(TypeError, match="n_layers must be an integer"):
        build_model(dict(TINY_CONFIGS["llada"], n_layers="2"))
    with pytest.raises(ValueError, match="mask_token_id=500 is outside the vocabulary"):
        build_model(dict(TINY_CONFIGS["llada"], mask_token_id=500))


# LLaDA-MoE's moe_layer_freq lists every layer: test_moe_layer_freq_must_list_every_layer.
@pytest.mark.parametrize("family", ["llada", "dream", "llada2"])
@pytest.mark.parametrize("layers", [4, 1_000_000_000])
def test_layer_count_that_disagrees_with_the_weights_is_named(tmp_path, family, model, layers):
    """Refused from the headers, before a model of the config's size is laid out (10^9 layers
    would hang); LLaDA2's count extrapolates past its dense first layer."""
    key = FAMILIES[family].config_class.layers_key
    stored = TINY_CONFIGS[family][key]
    config = dict(TINY_CONFIGS[family], **{key: layers})
    folder = write_sharded(tmp_path / "ckpt", config, model.state_dict())
    with pytest.raises(
        ValueError, match=f"{key} is {layers}, .* which is {stored} layers; set {key} to {stored}"
    ):
        load_model(folder, device="cpu")


def test_moe_layer_freq_must_list_every_layer():
    config = dict(TINY_CONFIGS["llada_moe"], num_hidden_layers=1_000_000_000)
    with pytest.raises(ValueError, match="moe_layer_freq lists 3 layers but num_hidden_layers"):
        build_model(config)
    with pytest.raises(ValueError, match="moe_layer_freq must list 0 \\(dense\\) or 1"):
        build_model(dict(TINY_CONFIGS["llada_moe"], moe_layer_freq=[0, 2, 1]))


def test_a_layer_count_short_of_the_dense_layers_is_named(tmp_path):
    """LLaDA2 with more dense layers than the config's count: the count is not extrapolated
    from MoE layers it does not have."""
    config = dict(TINY_CONFIGS["llada2"], first_k_dense_replace=3)
    state = build_model(config, device="cpu").state_dict()
    folder = write_sharded(tmp_path / "ckpt", dict(config, num_hidden_layers=2), state)
    with pytest.raises(ValueError, match="num_hidden_layers is 2, .* which is 3 layers"):
        load_model(folder, device="cpu")


def test_missing_optional_size_key_is_named(tmp_path):
    """An optional shape key whose default gives other shapes than the weights (Dream's
    num_key_value_heads defaults to 32; the weights have 2)."""
    config = dict(TINY_CONFIGS["dream"], num_attention_heads=32)
    state = build_model(config, device="cpu").state_dict()
    del config["num_key_value_heads"]
    folder = write_sharded(tmp_path / "ckpt", config, state)
    with pytest.raises(
        ValueError,
        match="config.json lacks num_key_value_heads \\(the defaults num_key_value_heads=32",
    ):
        load_model(folder, device="cpu")


def test_sizes_far_from_the_weights_are_named(tmp_path, family, model):
    key = "d_model" if family == "llada" else "hidden_size"
    config = dict(TINY_CONFIGS[family], **{key: 4096})
    if family == "llada_moe":
        config["num_attention_heads"] = 64  # head_dim 64: rotary_dim stays even
    folder = write_sharded(tmp_path / "ckpt", config, model.state_dict())
    with pytest.raises(ValueError, match=f"its sizes \\(.*{key}=4096.*\\) give .* fix those keys"):
        load_model(folder, device="cpu")


# The keys every published config.json of the family holds and no default stands in for.
REQUIRED_KEYS = {
    "llada": [
        "d_model", "n_heads", "n_layers", "mlp_hidden_size", "vocab_size", "embedding_size",
        "mask_token_id", "eos_token_id", "pad_token_id",
    ],
    "dream": [
        "hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
        "vocab_size",
    ],
    "llada2": [
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "num_experts", "moe_intermediate_size",
        "pad_token_id",
    ],
    "llada_moe": [
        "vocab_size", "hidden_size", "dense_intermediate_size", "expert_intermediate_size",
        "shared_expert_intermediate_size", "num_hidden_layers", "num_attention_heads",
        "rope_theta", "partial_rotary_factor", "num_experts", "num_experts_per_tok",
        "moe_layer_freq", "eos_token_id", "pad_token_id",
    ],
}  # fmt: skip


@pytest.mark.parametrize(
    ("family", "key"),
    [(family, key) for family, keys in REQUIRED_KEYS.items() for key in keys],
)
def test_a_missing_required_key_is_named_with_the_file(tmp_path, family, key):
    """Never filled with the reference default: without n_heads the error used to say "not
    divisible by n_heads=12", and a default that divides loaded the wrong head count."""
    config = dict(TINY_CONFIGS[family])
    del config[key]
    folder = write_sharded(tmp_path / "ckpt", config, tiny_model(family).state_dict())
    with pytest.raises(ValueError) as raised:
        load_model(folder, device="cpu")
    assert str(raised.value).startswith(f"{folder / 'config.json'} lacks {key}, which every ")
    assert f"add {key} to it" in str(raised.value)
    with pytest.raises(
        ValueError, match=f"^the {type(tiny_model(family).config).__name__} dict lacks {key},"
    ):
        build_model(config)


@pytest.mark.parametrize(
    ("family", "optional"),
    [
        ("llada", {"rope_theta": 10000.0, "rms_norm_eps": 1e-5, "n_kv_heads": None}),
        ("dream", {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "mask_token_id": 151666}),
        # LLaDA2's and LLaDA-MoE's ids: the published generate's defaults
        (
            "llada2",
            {"rope_theta": 10000.0, "partial_rotary_factor": 0.5, "use_bias": True,
             "head_dim": 16, "mask_token_id": 156895, "eos_token_id": 156892},
        ),
        ("llada_moe", {"qk_layernorm": None, "clip_qkv": None, "mask_token_id": 156895}),
    ],
)  # fmt: skip
def test_optional_keys_take_the_published_defaults(tmp_path, family, optional):
    config = {k: v for k, v in TINY_CONFIGS[family].items() if k not in optional}
    if family != "llada":
        config["vocab_size"] = 157184  # room for the default ids
    loaded = build_model(config)
    for key, default in optional.items():
        assert getattr(loaded.config, key) == default, key


def test_an_optional_key_whose_default_breaks_the_config_is_named():
    """num_key_value_heads defaults to 32 (Qwen2's); the error says it was not in the config."""
    config = dict(TINY_CONFIGS["dream"])
    del config["num_key_value_heads"]
    with pytest.raises(
        ValueError,
        match=r"num_attention_heads=4 is not a multiple of num_key_value_heads=32 "
        r"\(num_key_value_heads not set, so the defaults num_key_value_heads=32 were taken\)",
    ):
        build_model(config)


def test_bad_config_values_name_the_file(tmp_path, family, model):
    key = "n_kv_heads" if family == "llada" else "num_key_value_heads"
    config = dict(TINY_CONFIGS[family], **{key: 3})
    folder = write_sharded(tmp_path / "ckpt", config, model.state_dict())
    with pytest.raises(ValueError, match=rf"^{folder / 'config.json'}: .* multiple of .*=3"):
        load_model(folder, device="cpu")

"""Configurations of the model families, parsed from a checkpoint's ``config.json``.

Field names are the ``config.json`` keys of the published checkpoints. The keys every published
checkpoint holds and no default can stand in for (``required_keys``: the shapes, and LLaDA's
token ids, whose reference defaults are GPT-2's) must be present: a missing one is a
ValueError naming it and the file, where a default would load a model of the wrong shape or
fail on a number the user never wrote. Any other missing key takes the default of the published
configuration class (``LLaDAConfig``/``ModelConfig`` in ``configuration_llada.py``,
``DreamConfig`` in ``configuration_dream.py``, ``LLaDA2MoeConfig`` in
``configuration_llada2_moe.py``, ``LLaDAMoEConfig`` in ``configuration_lladamoe.py``), as the
original remote code reads it. Settings
that select behaviour this package does not implement (ALiBi, other block or norm types, RoPE
scaling, ...) are checked and refused with a ValueError instead of being ignored. Every other
key is kept in ``extra`` and written back unchanged by ``save_pretrained``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

MAX_CONFIG_BYTES = 1 << 20

TokenIds = int | tuple[int, ...] | None


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in the file ``path`` (a model folder's settings or tokenizer file); a
    ValueError naming the file when it is not valid JSON or holds something else."""
    fix = "restore it from the model's original files"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {fix}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} must hold a JSON object ({{...}}), got a JSON {_json_kind(data)}; {fix}"
        )
    return data


def _json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type."""
    kinds = {list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")


def read_config_json(folder: Path) -> dict[str, Any]:
    """The JSON object in ``folder/config.json``, checked to be one."""
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} has no config.json; pass a Hugging Face checkpoint folder")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes; not a model config")
    return read_json_object(path)


def _check_int(owner: str, name: str, value: Any, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner} {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner} {name} must be >= {minimum}, got {value}")


def _check_positive_float(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner} {name} must be a number, got {value!r}")
    if not value > 0:
        raise ValueError(f"{owner} {name} must be > 0, got {value}")


def _check_bool(owner: str, name: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, bool):
        raise TypeError(f"{owner} {name} must be true or false, got {value!r}")


def _check_token_ids(owner: str, name: str, value: Any, vocab: int) -> None:
    if value is None:
        return
    for token in value if isinstance(value, tuple) else (value,):
        _check_int(owner, name, token, 0)
        if token >= vocab:
            raise ValueError(f"{owner} {name}={token} is outside the vocabulary [0, {vocab})")


def _check_setting(
    owner: str, data: dict[str, Any], key: str, default: Any, supported: Any
) -> None:
    value = data.get(key, default)
    if value != supported:
        shown = "missing" if key not in data else repr(value)
        raise ValueError(
            f"{owner} config.json: {key} is {shown} (the reference default is {default!r}); "
            f"mosa.models implements only {key}={supported!r}"
        )


class _ConfigBase:
    """Parsing and serialisation shared by the family configs (dataclasses)."""

    model_type: ClassVar[str]
    # other model_type spellings of the family's published configuration classes
    model_type_aliases: ClassVar[tuple[str, ...]] = ()
    architecture: ClassVar[str]
    # config.json keys that must be present (null allowed where the field is optional)
    required_keys: ClassVar[tuple[str, ...]]
    # config.json keys that must hold one value: key -> (reference default, supported value)
    required_settings: ClassVar[dict[str, tuple[Any, Any]]]
    # the key that counts the layers, and the keys that set parameter shapes
    layers_key: ClassVar[str]
    size_keys: ClassVar[tuple[str, ...]]
    extra: dict[str, Any]

    @classmethod
    def describes(cls, data: dict[str, Any]) -> bool:
        """Whether a parsed ``config.json`` is one of this family's: its ``model_type`` is the
        family's (or an alias), or it has none and its ``architectures`` name the family's.
        A family sharing its ``model_type`` with another tells itself apart here by the keys."""
        model_type = data.get("model_type")
        if model_type is not None:
            return model_type in (cls.model_type, *cls.model_type_aliases)
        architectures = data.get("architectures")
        return isinstance(architectures, list) and cls.architecture in architectures

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None):
        """Builds the config from a parsed ``config.json`` object; ``source`` (the file it was
        read from) is named in the errors."""
        if not isinstance(data, dict):
            raise TypeError(f"a model config must be a dict, got {type(data).__name__}")
        owner = cls.__name__
        missing = [key for key in cls.required_keys if key not in data]
        if missing:
            keys = ", ".join(missing)
            raise ValueError(
                f"{source or f'the {owner} dict'} lacks {keys}, which every {cls.model_type} "
                f"config.json holds ({', '.join(cls.required_keys)}); add {keys} to it, with the "
                "values of the checkpoint's published config.json"
            )
        for key, (default, supported) in cls.required_settings.items():
            _check_setting(owner, data, key, default, supported)
        names = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
        # JSON arrays (several EOS ids, LLaDA-MoE's moe_layer_freq) as tuples: configs are frozen
        values = {
            key: tuple(data[key]) if isinstance(data[key], list) else data[key]
            for key in names
            if key in data
        }
        extra = {k: v for k, v in data.items() if k not in names}
        try:
            return cls(**values, extra=extra)
        except (TypeError, ValueError) as err:
            raise type(err)(cls._explained(err, data, source)) from None

    @classmethod
    def _explained(cls, err: Exception, data: dict[str, Any], source: str | None) -> str:
        """``err`` with the file it concerns and the optional shape keys it lacks, whose
        defaults may be the numbers the message shows."""
        message = f"{source}: {err}" if source else str(err)
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        unset = [key for key in cls.size_keys if key not in data]
        if unset:
            taken = ", ".join(f"{key}={defaults[key]!r}" for key in unset)
            message += f" ({', '.join(unset)} not set, so the defaults {taken} were taken)"
        return message

    @classmethod
    def from_pretrained(cls, folder: str | Path):
        """The config of a checkpoint folder (Hugging Face's name; peft calls it)."""
        folder = Path(folder)
        return cls.from_dict(read_config_json(folder), str(folder / "config.json"))

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` object: the extra keys as read, then every field."""
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        out.setdefault("model_type", self.model_type)  # an alias read stays as it was written
        out["architectures"] = [self.architecture]
        return out

    @property
    def rotary_dim(self) -> int:
        """Leading dims of each head that RoPE rotates (all of them unless partial)."""
        return self.head_dim

    @property
    def uniform_layers_from(self) -> int | None:
        """The first layer from which every further layer (also past the config's count) has
        the same parameter shapes, which the layer count check extrapolates from; None when
        the config fixes each layer's kind."""
        return 0


@dataclass(frozen=True)
class LLaDAConfig(_ConfigBase):
    """LLaDA (``model_type`` "llada", ``LLaDAModelLM``): LLaDA-8B-Base/Instruct, LLaDA-1.5."""

    model_type: ClassVar[str] = "llada"
    architecture: ClassVar[str] = "LLaDAModelLM"
    required_keys: ClassVar[tuple[str, ...]] = (
        "d_model", "n_heads", "n_layers", "mlp_hidden_size", "vocab_size", "embedding_size",
        "mask_token_id", "eos_token_id", "pad_token_id",
    )  # fmt: skip
    required_settings: ClassVar[dict[str, tuple[Any, Any]]] = {
        "rope": (False, True),
        "rope_full_precision": (True, True),
        "alibi": (False, False),
        "block_type": ("sequential", "llama"),
        "block_group_size": (1, 1),
        "layer_norm_type": ("default", "rms"),
        "layer_norm_with_affine": (True, True),
        "activation_type": ("swiglu", "silu"),
        "attention_layer_norm": (False, False),
        "input_emb_norm": (False, False),
        "scale_logits": (False, False),
    }
    layers_key: ClassVar[str] = "n_layers"
    size_keys: ClassVar[tuple[str, ...]] = (
        "d_model", "n_heads", "n_layers", "vocab_size", "embedding_size",
    )  # fmt: skip

    @classmethod
    def describes(cls, data: dict[str, Any]) -> bool:
        return super().describes(data) and not _names_llada_moe(data)

    d_model: int = 768
    n_heads: int = 12
    n_kv_heads: int | None = None
    multi_query_attention: bool | None = None
    n_layers: int = 12
    mlp_ratio: int = 4
    mlp_hidden_size: int | None = None
    vocab_size: int = 50257
    embedding_size: int | None = 50304
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_sequence_length: int = 1024
    mask_token_id: int | None = 50256
    eos_token_id: TokenIds = 50256
    pad_token_id: int | None = 50256
    weight_tying: bool = True
    include_bias: bool = False
    include_qkv_bias: bool | None = False
    bias_for_layer_norm: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        owner = "LLaDAConfig"
        for name in ("d_model", "n_heads", "n_layers", "mlp_ratio", "vocab_size"):
            _check_int(owner, name, getattr(self, name), 1)
        for name in ("n_kv_heads", "mlp_hidden_size", "embedding_size", "max_sequence_length"):
            _check_int(owner, name, getattr(self, name), 1, optional=True)
        for name in ("weight_tying", "include_bias"):
            _check_bool(owner, name, getattr(self, name))
        for name in ("multi_query_attention", "include_qkv_bias", "bias_for_layer_norm"):
            _check_bool(owner, name, getattr(self, name), optional=True)
        _check_positive_float(owner, "rope_theta", self.rope_theta)
        _check_positive_float(owner, "rms_norm_eps", self.rms_norm_eps)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"{owner} d_model={self.d_model} is not divisible by n_heads={self.n_heads}"
            )
        if self.embedding_size is not None and self.embedding_size < self.vocab_size:
            raise ValueError(
                f"{owner} embedding_size={self.embedding_size} is smaller than vocab_size={self.vocab_size}"
            )
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"{owner} n_heads={self.n_heads} is not a multiple of n_kv_heads={self.kv_heads}"
            )
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
            _check_token_ids(owner, name, getattr(self, name), self.logits_size)

    @property
    def kv_heads(self) -> int:
        """Key/value heads, as ``ModelConfig.effective_n_kv_heads`` resolves them."""
        mqa = self.multi_query_attention
        if self.n_kv_heads is None:
            return 1 if mqa else self.n_heads
        if mqa is not None and self.n_kv_heads != (1 if mqa else self.n_heads):
            raise ValueError("LLaDAConfig: multi_query_attention and n_kv_heads disagree; set one")
        return self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def mlp_hidden(self) -> int:
        return (
            self.mlp_hidden_size
            if self.mlp_hidden_size is not None
            else self.mlp_ratio * self.d_model
        )

    @property
    def logits_size(self) -> int:
        """Rows of the embedding and of the output head (``embedding_size or vocab_size``)."""
        return self.embedding_size or self.vocab_size

    @property
    def qkv_bias(self) -> bool:
        return bool(self.include_bias or self.include_qkv_bias)

    @property
    def norm_bias(self) -> bool:
        return self.include_bias if self.bias_for_layer_norm is None else self.bias_for_layer_norm


class _HeadShapes:
    """The head shapes of the Hugging Face-style configs (Dream, LLaDA-MoE): ``hidden_size``
    split over ``num_attention_heads``, ``num_key_value_heads`` of them (null: all) for k/v."""

    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int | None
    vocab_size: int

    def _check_heads(self, owner: str) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{owner} hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"{owner} num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.kv_heads}"
            )

    @property
    def kv_heads(self) -> int:
        return (
            self.num_attention_heads
            if self.num_key_value_heads is None
            else self.num_key_value_heads
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def logits_size(self) -> int:
        return self.vocab_size


@dataclass(frozen=True)
class DreamConfig(_HeadShapes, _ConfigBase):
    """Dream (``model_type`` "Dream", ``DreamModel``): Dream-v0-Base/Instruct-7B, Qwen2 layout."""

    model_type: ClassVar[str] = "Dream"
    architecture: ClassVar[str] = "DreamModel"
    required_keys: ClassVar[tuple[str, ...]] = (
        "hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
        "vocab_size",
    )  # fmt: skip
    required_settings: ClassVar[dict[str, tuple[Any, Any]]] = {
        "hidden_act": ("silu", "silu"),
        "rope_scaling": (None, None),
        "use_sliding_window": (False, False),
    }
    layers_key: ClassVar[str] = "num_hidden_layers"
    size_keys: ClassVar[tuple[str, ...]] = (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads",
    )  # fmt: skip

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 32
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    mask_token_id: int | None = 151666
    pad_token_id: int | None = 151643
    eos_token_id: TokenIds = None
    tie_word_embeddings: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        owner = "DreamConfig"
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
        ):
            _check_int(owner, name, getattr(self, name), 1)
        _check_int(owner, "num_key_value_heads", self.num_key_value_heads, 1, optional=True)
        _check_bool(owner, "tie_word_embeddings", self.tie_word_embeddings)
        _check_positive_float(owner, "rope_theta", self.rope_theta)
        _check_positive_float(owner, "rms_norm_eps", self.rms_norm_eps)
        self._check_heads(owner)
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
            _check_token_ids(owner, name, getattr(self, name), self.vocab_size)


def _check_rotary(owner: str, head_dim: int, factor: Any) -> None:
    """``partial_rotary_factor`` in (0, 1], rotating an even number of each head's dims."""
    if isinstance(factor, bool) or not isinstance(factor, int | float):
        raise TypeError(f"{owner} partial_rotary_factor must be a number, got {factor!r}")
    rotary = int(head_dim * factor)
    if not 0 < factor <= 1 or rotary < 2 or rotary % 2:
        raise ValueError(
            f"{owner} partial_rotary_factor={factor} rotates {rotary} of the head's {head_dim} "
            "dims; it must be in (0, 1] and rotate an even number >= 2 of them"
        )


def _check_moe_sizes(owner: str, experts: int, top_k: int) -> None:
    _check_int(owner, "num_experts", experts, 1)
    _check_int(owner, "num_experts_per_tok", top_k, 1)
    if top_k > experts:
        raise ValueError(f"{owner} num_experts_per_tok={top_k} is more than num_experts={experts}")


@dataclass(frozen=True)
class LLaDA2Config(_ConfigBase):
    """LLaDA2.x MoE (``model_type`` "llada2_moe", ``LLaDA2MoeModelLM``): LLaDA2.0-mini/-flash
    and LLaDA2.1, block diffusion. ``llada21_moe`` is what the dllm copy of LLaDA2.1's code
    names the same configuration.

    ``mask_token_id`` and ``eos_token_id`` are read from ``config.json`` when it holds them;
    otherwise they are the published ``generate``'s defaults (``mask_id=156895``,
    ``eos_id=156892``), which is how the checkpoints are decoded (the configuration class has
    no mask id and no EOS default). ``num_key_value_heads: 0`` (the class default) means as
    many as the query heads, as LLaDA2.1's class resolves it.
    """

    model_type: ClassVar[str] = "llada2_moe"
    model_type_aliases: ClassVar[tuple[str, ...]] = ("llada21_moe",)
    architecture: ClassVar[str] = "LLaDA2MoeModelLM"
    required_keys: ClassVar[tuple[str, ...]] = (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "num_experts", "moe_intermediate_size",
        "pad_token_id",
    )  # fmt: skip
    required_settings: ClassVar[dict[str, tuple[Any, Any]]] = {
        "hidden_act": ("silu", "silu"),
        "rope_scaling": (None, None),
    }
    layers_key: ClassVar[str] = "num_hidden_layers"
    size_keys: ClassVar[tuple[str, ...]] = (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "num_experts",
        "num_shared_experts", "moe_intermediate_size", "first_k_dense_replace",
    )  # fmt: skip

    vocab_size: int = 30592
    hidden_size: int = 1024
    intermediate_size: int | None = None
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 0
    head_dim: int | None = None
    use_qkv_bias: bool = False
    use_qk_norm: bool = True
    use_bias: bool = True
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 16384
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.5
    num_experts: int | None = 16
    num_shared_experts: int | None = 0
    num_experts_per_tok: int = 2
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    # Not in the published LLaDA2.x configs; the load-balancing weight the trainer uses when
    # experts train (docs/DESIGN.md §7).
    router_aux_loss_coef: float = 0.001
    moe_intermediate_size: int | None = None
    first_k_dense_replace: int = 0
    pad_token_id: int | None = 126081
    mask_token_id: int | None = 156895
    eos_token_id: TokenIds = 156892
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        owner = "LLaDA2Config"
        for name in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings",
        ):  # fmt: skip
            _check_int(owner, name, getattr(self, name), 1)
        _check_int(owner, "num_key_value_heads", self.num_key_value_heads, 0)
        _check_int(owner, "head_dim", self.head_dim, 1, optional=True)
        _check_int(owner, "first_k_dense_replace", self.first_k_dense_replace, 0)
        for name in ("use_qkv_bias", "use_qk_norm", "use_bias", "tie_word_embeddings"):
            _check_bool(owner, name, getattr(self, name))
        for name in ("rope_theta", "rms_norm_eps", "routed_scaling_factor"):
            _check_positive_float(owner, name, getattr(self, name))
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"{owner} num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.kv_heads}"
            )
        if self.head_dim is None:  # resolved as the published class resolves it
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        _check_rotary(owner, self.head_dim, self.partial_rotary_factor)
        if not self.is_moe_layer(0):  # the dense layers' MLP
            _check_int(owner, "intermediate_size", self.intermediate_size, 1)
        if self.num_experts is not None:
            self._check_moe(owner)
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
            _check_token_ids(owner, name, getattr(self, name), self.vocab_size)

    def _check_moe(self, owner: str) -> None:
        """The router's shapes: groups that split the experts, enough experts to choose from."""
        _check_moe_sizes(owner, self.num_experts, self.num_experts_per_tok)
        _check_int(owner, "moe_intermediate_size", self.moe_intermediate_size, 1)
        _check_int(owner, "num_shared_experts", self.num_shared_experts, 1, optional=True)
        _check_int(owner, "n_group", self.n_group, 1)
        _check_int(owner, "topk_group", self.topk_group, 1)
        if self.num_experts % self.n_group or self.num_experts // self.n_group < 2:
            raise ValueError(
                f"{owner} n_group={self.n_group} must split num_experts={self.num_experts} into "
                "equal groups of at least 2 experts (a group is ranked by its two best scores)"
            )
        per_group = self.num_experts // self.n_group
        if self.topk_group > self.n_group or self.num_experts_per_tok > self.topk_group * per_group:
            raise ValueError(
                f"{owner} topk_group={self.topk_group} of n_group={self.n_group} groups of "
                f"{per_group} experts cannot hold num_experts_per_tok={self.num_experts_per_tok}"
            )

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def logits_size(self) -> int:
        return self.vocab_size

    def is_moe_layer(self, layer: int) -> bool:
        """Layer ``layer`` has the MoE block (its first ``first_k_dense_replace`` are dense)."""
        return self.num_experts is not None and layer >= self.first_k_dense_replace

    @property
    def uniform_layers_from(self) -> int:
        # dense layers up to first_k_dense_replace, MoE layers after it
        moe = self.num_experts is not None and self.first_k_dense_replace < self.num_hidden_layers
        return self.first_k_dense_replace if moe else 0


def _names_llada_moe(data: dict[str, Any]) -> bool:
    """LLaDA-MoE checkpoints say ``model_type: "llada"`` as dense LLaDA's do; their experts
    (``num_experts``), or the architecture, tell them apart."""
    architectures = data.get("architectures")
    named = isinstance(architectures, list) and LLaDAMoEConfig.architecture in architectures
    return "num_experts" in data or named


@dataclass(frozen=True)
class LLaDAMoEConfig(_HeadShapes, _ConfigBase):
    """LLaDA-MoE (``LLaDAMoEModelLM``): LLaDA-MoE-7B-A1B-Base/Instruct, bidirectional with
    OLMoE-style experts. Its ``config.json`` says ``model_type: "llada"`` like dense LLaDA's
    (``describes`` tells the two apart by the MoE keys); the dllm copy of the code names it
    ``lladamoe``.

    The checkpoints' ``config.json`` holds no mask id: ``mask_token_id`` defaults to the model
    card's ``generate(mask_id=156895)``. The shape keys, ``rope_theta`` and
    ``partial_rotary_factor`` (reference defaults -1), ``moe_layer_freq`` and the EOS / pad ids
    (the reference defaults are OLMoE's) are required. Like the published code, the router is
    always a softmax top-k without renormalisation: ``norm_topk_prob``,
    ``moe_router_score_function``, ``routed_scaling_factor`` and the router group keys are
    kept in ``extra`` and not used.
    """

    model_type: ClassVar[str] = "llada"
    model_type_aliases: ClassVar[tuple[str, ...]] = ("lladamoe",)
    architecture: ClassVar[str] = "LLaDAMoEModelLM"
    required_keys: ClassVar[tuple[str, ...]] = (
        "vocab_size", "hidden_size", "dense_intermediate_size", "expert_intermediate_size",
        "shared_expert_intermediate_size", "num_hidden_layers", "num_attention_heads",
        "rope_theta", "partial_rotary_factor", "num_experts", "num_experts_per_tok",
        "moe_layer_freq", "eos_token_id", "pad_token_id",
    )  # fmt: skip
    required_settings: ClassVar[dict[str, tuple[Any, Any]]] = {
        "hidden_act": ("silu", "silu"),
        "rope_scaling": (None, None),
    }
    layers_key: ClassVar[str] = "num_hidden_layers"
    size_keys: ClassVar[tuple[str, ...]] = (
        "vocab_size", "hidden_size", "dense_intermediate_size", "expert_intermediate_size",
        "shared_expert_intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "num_experts",
    )  # fmt: skip

    vocab_size: int = -1
    hidden_size: int = -1
    dense_intermediate_size: int = -1
    expert_intermediate_size: int = -1
    shared_expert_intermediate_size: int | None = -1
    num_hidden_layers: int = -1
    num_attention_heads: int = -1
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    rope_theta: float = -1
    partial_rotary_factor: float = -1
    attention_bias: bool = False
    clip_qkv: float | None = None
    num_experts_per_tok: int = -1
    num_experts: int = -1
    qk_layernorm: bool | None = None
    moe_layer_freq: tuple[int, ...] = ()
    moe_router_enable_expert_bias: bool | None = None
    router_aux_loss_coef: float = 0.01
    mask_token_id: int | None = 156895
    pad_token_id: int | None = 1
    eos_token_id: TokenIds = 50279
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def describes(cls, data: dict[str, Any]) -> bool:
        if data.get("model_type") == LLaDAConfig.model_type:
            return _names_llada_moe(data)
        return super().describes(data)

    def __post_init__(self) -> None:
        owner = "LLaDAMoEConfig"
        for name in (
            "vocab_size", "hidden_size", "expert_intermediate_size", "num_hidden_layers",
            "num_attention_heads", "max_position_embeddings",
        ):  # fmt: skip
            _check_int(owner, name, getattr(self, name), 1)
        _check_int(owner, "num_key_value_heads", self.num_key_value_heads, 1, optional=True)
        _check_int(owner, "shared_expert_intermediate_size", self.shared_expert_intermediate_size, 1, optional=True)  # fmt: skip
        _check_moe_sizes(owner, self.num_experts, self.num_experts_per_tok)
        for name in ("tie_word_embeddings", "attention_bias"):
            _check_bool(owner, name, getattr(self, name))
        for name in ("qk_layernorm", "moe_router_enable_expert_bias"):
            _check_bool(owner, name, getattr(self, name), optional=True)
        for name in ("rope_theta", "rms_norm_eps"):
            _check_positive_float(owner, name, getattr(self, name))
        if self.clip_qkv is not None:
            _check_positive_float(owner, "clip_qkv", self.clip_qkv)
        self._check_heads(owner)
        _check_rotary(owner, self.head_dim, self.partial_rotary_factor)
        self._check_layer_kinds(owner)
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
            _check_token_ids(owner, name, getattr(self, name), self.vocab_size)

    def _check_layer_kinds(self, owner: str) -> None:
        """``moe_layer_freq``: one 0 (dense) or 1 (MoE) per layer, as the published layers
        index it; the dense layers need ``dense_intermediate_size``."""
        kinds = self.moe_layer_freq
        if not isinstance(kinds, tuple) or not all(k in (0, 1) and type(k) is int for k in kinds):
            raise ValueError(
                f"{owner} moe_layer_freq must list 0 (dense) or 1 (MoE) per layer, got {kinds!r}"
            )
        if len(kinds) < self.num_hidden_layers:
            raise ValueError(
                f"{owner} moe_layer_freq lists {len(kinds)} layers but num_hidden_layers is "
                f"{self.num_hidden_layers}; give one entry per layer"
            )
        if not all(self.is_moe_layer(i) for i in range(self.num_hidden_layers)):
            _check_int(owner, "dense_intermediate_size", self.dense_intermediate_size, 1)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe_layer_freq[layer] != 0

    @property
    def uniform_layers_from(self) -> None:
        return None  # moe_layer_freq lists every layer's kind

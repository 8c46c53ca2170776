"""Configurations of the two model families, parsed from a checkpoint's ``config.json``.

Field names are the ``config.json`` keys of the published checkpoints. The keys every published
checkpoint holds and no default can stand in for (``required_keys``: the shapes, and LLaDA's
token ids, whose reference defaults are GPT-2's) must be present: a missing one is a
ValueError naming it and the file, where a default would load a model of the wrong shape or
fail on a number the user never wrote. Any other missing key takes the default of the published
configuration class (``LLaDAConfig``/``ModelConfig`` in ``configuration_llada.py``,
``DreamConfig`` in ``configuration_dream.py``), as the original remote code reads it. Settings
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
        values = {key: data[key] for key in names if key in data}
        if isinstance(values.get("eos_token_id"), list):
            values["eos_token_id"] = tuple(values["eos_token_id"])
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
        out["model_type"] = self.model_type
        out["architectures"] = [self.architecture]
        return out


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


@dataclass(frozen=True)
class DreamConfig(_ConfigBase):
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
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
            _check_token_ids(owner, name, getattr(self, name), self.vocab_size)

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

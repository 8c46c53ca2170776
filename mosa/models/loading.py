"""``load_model`` (a checkpoint folder) and ``build_model`` (random weights from a config)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .base import DiffusionLM
from .config import read_config_json
from .families import FAMILIES, family_of, family_of_config
from .files import read_state_dict, stored_parameter_count
from .presets import PRESETS

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or the current CUDA device when there is one, else the CPU.

    Raises ValueError for a name torch does not know and for a CUDA device this machine
    does not have, before anything is read onto it.
    """
    if device is not None:
        try:
            chosen = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device {device!r} is not a torch device; give e.g. 'cpu', 'cuda' or 'cuda:1'"
            ) from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r}: CUDA is not available on this machine; use the CPU "
                "(device 'cpu', --device cpu)"
            )
        if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``dtype`` (a torch dtype or a name such as "bf16"), by default bf16 on CUDA, else fp32."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
        return _DTYPES[dtype]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype or its name, got {dtype!r}")
    return dtype


def _empty_model(cls: type[DiffusionLM], config: Any) -> DiffusionLM:
    with torch.device("meta"):
        return cls(config)


def _parameter_count(config, layers: int) -> int:
    cls = family_of(config).model_class
    shrunk = dataclasses.replace(config, **{config.layers_key: layers})
    return sum(t.numel() for t in _empty_model(cls, shrunk).state_dict().values())


def _check_parameter_count(folder: Path, config, data: dict[str, Any]) -> None:
    """Refuses a config whose parameter count disagrees with the weights' headers, naming the
    key to fix, before a model of the config's size is built (``n_layers: 1e9`` would take
    hours just to lay out on the meta device).

    A count that agrees, or that stays within twice the weights' (a model that size is
    cheap to lay out), is left to ``read_state_dict``, which names the tensor.
    """
    stored = stored_parameter_count(folder)
    layers = getattr(config, config.layers_key)
    # From config.uniform_layers_from on, every layer has the same shapes (LLaDA2's first
    # dense layers differ): there the count is linear in the layer count.
    line = None
    if config.uniform_layers_from is not None:
        first = config.uniform_layers_from + 1
        one, two = _parameter_count(config, first), _parameter_count(config, first + 1)
        line = (two - one, one - (two - one) * first, first)
    if line is not None and layers >= line[2]:
        expected = line[1] + line[0] * layers
    else:
        expected = _parameter_count(config, layers)
    if expected == stored:
        return
    source = folder / "config.json"
    if line is not None:
        per_layer, outside, first = line
        stored_layers, rest = divmod(stored - outside, per_layer)
        if rest == 0 and stored_layers >= first:
            raise ValueError(
                f"{source}: {config.layers_key} is {layers}, but the weights hold {stored:,} "
                f"parameters, which is {stored_layers} layers; set {config.layers_key} to "
                f"{stored_layers}"
            )
    missing = [key for key in config.size_keys if key not in data]
    if missing:
        taken = ", ".join(f"{key}={getattr(config, key)}" for key in missing)
        raise ValueError(
            f"{source} lacks {', '.join(missing)} (the defaults {taken} were taken), and the "
            f"config then gives {expected:,} parameters where the weights hold {stored:,}; "
            f"add {', '.join(missing)} to config.json"
        )
    if expected > 2 * stored:
        sizes = ", ".join(f"{key}={getattr(config, key)}" for key in config.size_keys)
        raise ValueError(
            f"{source}: its sizes ({sizes}) give {expected:,} parameters but the weights hold "
            f"{stored:,}; fix those keys in config.json"
        )


def load_model(
    path: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> DiffusionLM:
    """Loads a checkpoint folder (``config.json`` + safetensors) of a registered family for
    inference.

    The family comes from ``config.json`` (an entry of ``mosa.models.FAMILIES``); the weights are read straight to ``device`` as
    ``dtype`` (defaults: the current CUDA device in bf16 when there is one, else the CPU in
    fp32), without ``trust_remote_code``. The model is returned in eval mode.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a checkpoint folder")
    data = read_config_json(folder)
    source = str(folder / "config.json")
    family = family_of_config(data, source)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    config = family.read_config(data, source)
    _check_parameter_count(folder, config, data)
    model = _empty_model(family.model_class, config)
    shapes = {name: t.shape for name, t in model.state_dict().items()}
    model.load_state_dict(read_state_dict(folder, shapes, dtype, device), assign=True)
    model.name_or_path = str(folder)
    return model.eval()


def build_model(
    config: str | dict[str, Any] | Any,
    *,
    device: str | torch.device = "meta",
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
) -> DiffusionLM:
    """A model with the shapes of ``config`` and random weights (none on the meta device).

    ``config``: a preset name (``"llada-8b"``, ``"dream-7b"``, ``"llada2-mini"``,
    ``"llada-moe-7b"``), a ``config.json`` dict or a config object. Weights are N(0, 0.02) from ``seed`` (``DiffusionLM.reset_parameters``).
    """
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown preset {config!r}; presets: {', '.join(PRESETS)}")
        config = PRESETS[config]
    if isinstance(config, dict):
        family = family_of_config(config)
        config = family.read_config(config)
    elif isinstance(config, tuple(f.config_class for f in FAMILIES.values())):
        family = family_of(config)
    else:
        raise TypeError(
            f"config must be a preset name, a dict or a model config, got {type(config).__name__}"
        )
    device = torch.device(device)
    dtype = resolve_dtype(dtype, device)
    model = _empty_model(family.model_class, config)
    if device.type == "meta":
        return model.to(dtype)
    empty = {
        name: torch.empty(t.shape, dtype=dtype, device=device)
        for name, t in model.state_dict().items()
    }
    model.load_state_dict(empty, assign=True)
    model.reset_parameters(generator=torch.Generator(device=device).manual_seed(seed))
    return model

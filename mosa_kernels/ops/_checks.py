"""Argument checks shared by the ops: each error names the argument and the fix."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(name: str, value, *, ndim_min: int = 1, floating: bool | None = None) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() < ndim_min:
        raise ValueError(
            f"{name} must have at least {ndim_min} dimension(s), got shape {tuple(value.shape)}"
        )
    if floating is True and value.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor (float32, float16, bfloat16 or float64), got {value.dtype}"
        )
    if floating is False and (value.is_floating_point() or value.is_complex()):
        raise TypeError(f"{name} must be an integer tensor of token ids, got {value.dtype}")


def check_positive_int(name: str, value, *, expected: str = "a positive int") -> int:
    """``value`` must be an int >= 1 (a bool is not one); else a ValueError
    ``"{name} must be {expected}, got {value!r}"`` (``expected`` keeps a caller's wording)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def check_nonnegative(name: str, value, fix: str = "") -> None:
    """``value`` must be a finite real number >= 0 (NaN and inf are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not 0 <= value < float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0{fix}, got {value!r}")


def check_head(name: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """``x [..., d]`` against an LM head ``weight [V, d]`` (and ``bias [V]``), same dtype."""
    check_tensor(name, x, floating=True)
    check_tensor("weight", weight, ndim_min=2, floating=True)
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"weight must be [V, d] with d = {name}.shape[-1] = {x.shape[-1]}, got {tuple(weight.shape)}"
        )
    if weight.dtype != x.dtype:
        raise TypeError(f"weight is {weight.dtype} but {name} is {x.dtype}; cast one of them")
    if bias is not None:
        check_tensor("bias", bias, floating=True)
        if bias.shape != (weight.shape[0],) or bias.dtype != weight.dtype:
            raise ValueError(
                f"bias must be [{weight.shape[0]}] of dtype {weight.dtype}, got {tuple(bias.shape)} {bias.dtype}"
            )


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    named = [(n, t) for n, t in tensors.items() if t is not None]
    device = named[0][1].device
    for name, tensor in named[1:]:
        if tensor.device != device:
            raise ValueError(
                f"{name} is on {tensor.device} but {named[0][0]} is on {device}; "
                "move them to the same device"
            )
    return device


def check_token_ids(
    name: str, ids: torch.Tensor, vocab_size: int, ignore_index: int | None = None
) -> None:
    """Range check (one host sync): ids must lie in [0, vocab_size) or equal ignore_index."""
    valid = (ids >= 0) & (ids < vocab_size)
    if ignore_index is not None:
        valid |= ids == ignore_index
    if not bool(valid.all()):
        bad = ids[~valid][0].item()
        hint = f" or equal ignore_index={ignore_index}" if ignore_index is not None else ""
        raise ValueError(f"{name} holds id {bad}, outside [0, {vocab_size}){hint}")


def id_tensor(name: str, ids, vocab_size: int, device: torch.device) -> torch.Tensor:
    """A list/tuple/tensor of token ids as a checked int64 tensor on ``device``."""
    tensor = torch.as_tensor(
        list(ids) if not isinstance(ids, torch.Tensor) else ids, dtype=torch.int64
    )
    tensor = tensor.reshape(-1)
    if tensor.numel():
        check_token_ids(name, tensor, vocab_size)
    return tensor.to(device)


def rows_per_chunk(
    vocab_size: int, element_size: int, budget_bytes: int, requested: int | None
) -> int:
    """Rows whose ``[rows, vocab_size]`` logits fit ``budget_bytes`` (at least 1)."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {requested}")
        return requested
    return max(1, budget_bytes // max(1, vocab_size * element_size))

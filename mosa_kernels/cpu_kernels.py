"""The ``cpu`` backend: the C++ kernels of ``csrc`` (built as ``mosa_kernels._C``).

Every function has the name, arguments, in-place behaviour and results of its namesake in
:mod:`mosa_kernels.torch_kernels`, which states the semantics (the list:
:mod:`mosa_kernels.interface`). This module only checks dtypes and layouts and hands data
pointers to the extension, by keyword, so that an argument cannot land in another's place;
the kernels run with the GIL released, over rows, on ``torch.get_num_threads()`` threads.
Attention has no C++ kernel: its CPU path is the torch backend's.
"""

from __future__ import annotations

import torch

from . import _C
from .interface import DTYPE_CODES, FACTOR, STATE_WIDTH, THRESHOLD, TOP_K

# Re-exported: attention has no C++ kernel, and the cpu backend runs the torch one.
from .torch_kernels import attention_backward, attention_forward  # noqa: F401

_DTYPE_CODES = {getattr(torch, name): code for name, code in DTYPE_CODES.items()}


def _check_matrix(name: str, tensor: torch.Tensor) -> None:
    if tensor.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor for the cpu backend, got {tensor.device}")
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, columns], got shape {tuple(tensor.shape)}")
    if tensor.dtype not in _DTYPE_CODES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {tensor.dtype}")


def _rows_layout(tensor: torch.Tensor) -> bool:
    """Whether the kernels can address ``tensor`` directly: unit column stride, rows apart."""
    rows, cols = tensor.shape
    return (cols <= 1 or tensor.stride(1) == 1) and (rows <= 1 or tensor.stride(0) >= cols)


def _readable(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if _rows_layout(tensor) else tensor.contiguous()


def _matrix_args(name: str, tensor: torch.Tensor | None) -> dict[str, int]:
    """The extension's three arguments for matrix ``name``: its data pointer, dtype code and
    row stride, in a layout the kernels address; zeros for an absent matrix."""
    if tensor is None:
        return {name: 0, f"{name}_dtype": 0, f"{name}_stride": 0}
    return {
        name: tensor.data_ptr(),
        f"{name}_dtype": _DTYPE_CODES[tensor.dtype],
        f"{name}_stride": tensor.stride(0),
    }


def _vector(name: str, tensor: torch.Tensor, dtype: torch.dtype, length: int) -> torch.Tensor:
    if tensor.dtype != dtype or tensor.shape != (length,) or tensor.device.type != "cpu":
        raise ValueError(
            f"{name} must be a CPU {dtype} tensor of shape [{length}], "
            f"got {tensor.dtype} {tuple(tensor.shape)} on {tensor.device}"
        )
    return tensor.contiguous()


def _ids(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).to(device="cpu", dtype=torch.int64).contiguous()


def sample_update(
    logits: torch.Tensor,
    logits_uncond: torch.Tensor | None,
    cfg_scale: float,
    col_offset: int,
    state: torch.Tensor,
    best_index: torch.Tensor,
    temperature: float,
    tempered_confidence: bool,
    seed: int,
    suppress: torch.Tensor,
    exclude: torch.Tensor,
) -> None:
    """See :func:`mosa_kernels.torch_kernels.sample_update`; updates ``state``/``best_index``."""
    _check_matrix("logits", logits)
    n, width = logits.shape
    logits = _readable(logits)
    if logits_uncond is not None:
        _check_matrix("logits_uncond", logits_uncond)
        if logits_uncond.shape != logits.shape:
            raise ValueError(
                f"logits_uncond must match logits' shape {tuple(logits.shape)}, "
                f"got {tuple(logits_uncond.shape)}"
            )
        logits_uncond = _readable(logits_uncond)
    if state.dtype != torch.float32 or state.shape != (n, STATE_WIDTH) or not state.is_contiguous():
        raise ValueError(
            f"state must be a contiguous float32 tensor of shape [{n}, {STATE_WIDTH}], "
            f"got {state.dtype} {tuple(state.shape)}"
        )
    if (
        best_index.dtype != torch.int64
        or best_index.shape != (n,)
        or not best_index.is_contiguous()
    ):
        raise ValueError(
            f"best_index must be a contiguous int64 tensor of shape [{n}], "
            f"got {best_index.dtype} {tuple(best_index.shape)}"
        )
    suppress, exclude = _ids(suppress), _ids(exclude)
    _C.sample_update(
        **_matrix_args("logits", logits),
        **_matrix_args("logits_uncond", logits_uncond),
        rows=n,
        width=width,
        cfg_scale=float(cfg_scale),
        col_offset=int(col_offset),
        state=state.data_ptr(),
        best_index=best_index.data_ptr(),
        temperature=float(temperature),
        tempered_confidence=bool(tempered_confidence),
        seed=int(seed) & 0xFFFFFFFF,
        suppress=suppress.data_ptr(),
        num_suppress=suppress.numel(),
        exclude=exclude.data_ptr(),
        num_exclude=exclude.numel(),
        threads=torch.get_num_threads(),
    )


def select_transfer(
    confidence: torch.Tensor,
    is_masked: torch.Tensor,
    k: torch.Tensor | None,
    threshold: float | None,
    factor: float | None,
) -> torch.Tensor:
    """See :func:`mosa_kernels.torch_kernels.select_transfer`; returns ``bool[B, W]``."""
    _check_matrix("confidence", confidence)
    rows, width = confidence.shape
    conf = confidence.to(torch.float32).contiguous()
    if is_masked.dtype != torch.bool or is_masked.shape != confidence.shape:
        raise ValueError(
            f"is_masked must be a bool tensor shaped like confidence {tuple(confidence.shape)}, "
            f"got {is_masked.dtype} {tuple(is_masked.shape)}"
        )
    masked = is_masked.contiguous()
    k_rows = None
    if k is not None:
        rule, value = TOP_K, 0.0
        k_rows = _vector("k", k.to(torch.int64), torch.int64, rows)
    elif threshold is not None:
        rule, value = THRESHOLD, float(threshold)
    else:
        rule, value = FACTOR, float(factor)
    take = torch.empty(rows, width, dtype=torch.bool)
    _C.select_transfer(
        confidence=conf.data_ptr(),
        is_masked=masked.data_ptr(),
        rows=rows,
        width=width,
        rule=rule,
        k=0 if k_rows is None else k_rows.data_ptr(),
        threshold_or_factor=value,
        take=take.data_ptr(),
        threads=torch.get_num_threads(),
    )
    return take


def logprob_rows(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    ignore_index: int,
    grad: torch.Tensor | None,
    write_probs: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """See :func:`mosa_kernels.torch_kernels.logprob_rows`; returns ``(logp, lse)``."""
    _check_matrix("logits", logits)
    n, vocab = logits.shape
    if targets.dim() != 2 or targets.shape[0] != n:
        raise ValueError(f"targets must be [{n}, K], got shape {tuple(targets.shape)}")
    targets = targets.to(device="cpu", dtype=torch.int64).contiguous()
    num_targets = targets.shape[1]
    if grad is not None:
        if grad.shape != targets.shape:
            raise ValueError(f"grad must be shaped like targets {tuple(targets.shape)}")
        grad = grad.to(torch.float32).contiguous()
    in_place = grad is not None or write_probs
    buffer = _readable(logits)
    logp = torch.empty(n, num_targets, dtype=torch.float32)
    lse = torch.empty(n, dtype=torch.float32)
    _C.logprob_rows(
        **_matrix_args("logits", buffer),
        rows=n,
        vocab=vocab,
        targets=targets.data_ptr(),
        num_targets=num_targets,
        temperature=float(temperature),
        ignore_index=int(ignore_index),
        grad=0 if grad is None else grad.data_ptr(),
        write_probs=bool(write_probs),
        logp=logp.data_ptr(),
        lse=lse.data_ptr(),
        threads=torch.get_num_threads(),
    )
    if in_place and buffer is not logits:
        logits.copy_(buffer)
    return logp, lse


def kl_rows(
    logits: torch.Tensor, ref_logits: torch.Tensor, grad: torch.Tensor | None
) -> torch.Tensor:
    """See :func:`mosa_kernels.torch_kernels.kl_rows`; returns ``kl`` float32 ``[n]``."""
    _check_matrix("logits", logits)
    _check_matrix("ref_logits", ref_logits)
    if ref_logits.shape != logits.shape:
        raise ValueError(
            f"ref_logits must match logits' shape {tuple(logits.shape)}, "
            f"got {tuple(ref_logits.shape)}"
        )
    n, vocab = logits.shape
    if grad is not None:
        grad = _vector("grad", grad.to(torch.float32), torch.float32, n)
    buffer = _readable(logits)
    ref = _readable(ref_logits)
    kl = torch.empty(n, dtype=torch.float32)
    _C.kl_rows(
        **_matrix_args("logits", buffer),
        **_matrix_args("ref_logits", ref),
        rows=n,
        vocab=vocab,
        grad=0 if grad is None else grad.data_ptr(),
        kl=kl.data_ptr(),
        threads=torch.get_num_threads(),
    )
    if grad is not None and buffer is not logits:
        logits.copy_(buffer)
    return kl

"""Per-call backend choice (docs/DESIGN.md §3).

``triton`` for CUDA tensors when Triton is importable, ``cpu`` (the compiled ``csrc``
extension) for CPU tensors when it is built, ``torch`` otherwise. ``MOSA_BACKEND`` forces one;
a forced backend that cannot run raises instead of falling back silently.

Every backend module implements ``mosa_kernels.interface.Backend`` (``torch_kernels`` holds
the readable version of each kernel); the ops in ``mosa_kernels.ops`` only talk to that
interface.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

BACKENDS = ("triton", "cpu", "torch")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why Triton cannot run on ``device``, or None when it can."""
    try:
        importlib.import_module("triton")
    except ImportError:
        return "triton is not installed (pip install triton)"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and _interpreting():
        return None
    return (
        f"Triton kernels need CUDA tensors (got {device.type}); on the CPU set "
        "TRITON_INTERPRET=1 before triton is first imported to run them in the interpreter"
    )


def cpu_unavailable_reason(device: torch.device) -> str | None:
    """Why the compiled C++ kernels cannot run on ``device``, or None when they can."""
    if device.type != "cpu":
        return f"the cpu backend takes CPU tensors (got {device.type})"
    try:
        importlib.import_module("mosa_kernels._C")
    except ImportError as err:
        return f"the C++ extension mosa_kernels._C is not built ({err}); reinstall with pip"
    return None


def backend_name(device: torch.device) -> str:
    """The backend that runs an op whose tensors live on ``device``."""
    forced = os.environ.get("MOSA_BACKEND", "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"MOSA_BACKEND={forced!r} is not one of {', '.join(BACKENDS)}")
        reason = None
        if forced == "triton":
            reason = triton_unavailable_reason(device)
        elif forced == "cpu":
            reason = cpu_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"MOSA_BACKEND={forced} cannot run here: {reason}")
        return forced
    if device.type == "cuda" and triton_unavailable_reason(device) is None:
        return "triton"
    if device.type == "cpu" and cpu_unavailable_reason(device) is None:
        return "cpu"
    return "torch"


_MODULES = {
    "triton": "mosa_kernels.triton_kernels",
    "cpu": "mosa_kernels.cpu_kernels",
    "torch": "mosa_kernels.torch_kernels",
}


def kernels_for(device: torch.device) -> ModuleType:
    """The kernel module of the backend chosen for ``device``."""
    return importlib.import_module(_MODULES[backend_name(device)])


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on ``device`` in this process."""
    device = torch.device(device)
    names = ["torch"]
    if cpu_unavailable_reason(device) is None:
        names.insert(0, "cpu")
    if triton_unavailable_reason(device) is None:
        names.insert(0, "triton")
    return names

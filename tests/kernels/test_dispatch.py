"""Backend choice (docs/DESIGN.md §3): defaults, MOSA_BACKEND forcing, and clear errors."""

import pytest
import torch
from inputs import needs_cuda

import mosa_kernels
from mosa_kernels import dispatch

CPU = torch.device("cpu")
KERNEL_FUNCTIONS = ("sample_update", "select_transfer", "logprob_rows", "kl_rows")


@pytest.fixture
def no_forcing(monkeypatch):
    monkeypatch.delenv("MOSA_BACKEND", raising=False)


def test_default_on_cpu_is_the_compiled_extension(no_forcing):
    # The C++ extension is part of every install: CPU tensors never fall back to torch.
    assert dispatch.backend_name(CPU) == "cpu"
    assert dispatch.kernels_for(CPU).__name__ == "mosa_kernels.cpu_kernels"


@needs_cuda
def test_default_on_cuda_is_triton(no_forcing):
    assert dispatch.backend_name(torch.device("cuda")) == "triton"


@pytest.mark.parametrize("value", ["torch", "TORCH", " torch "])
def test_forcing_torch_is_case_and_space_insensitive(monkeypatch, value):
    monkeypatch.setenv("MOSA_BACKEND", value)
    assert dispatch.backend_name(CPU) == "torch"
    assert dispatch.kernels_for(CPU).__name__ == "mosa_kernels.torch_kernels"


def test_every_forced_backend_is_honoured(backend, device):
    assert dispatch.backend_name(device) == backend
    kernels = dispatch.kernels_for(device)
    assert kernels.__name__ == dispatch._MODULES[backend]
    for name in KERNEL_FUNCTIONS:
        assert callable(getattr(kernels, name, None)), f"{kernels.__name__} lacks {name}"


def test_env_is_read_at_every_call(monkeypatch):
    monkeypatch.setenv("MOSA_BACKEND", "torch")
    assert dispatch.backend_name(CPU) == "torch"
    monkeypatch.setenv("MOSA_BACKEND", "bogus")
    with pytest.raises(ValueError):
        dispatch.backend_name(CPU)


def test_unknown_backend_name_is_a_value_error(monkeypatch):
    monkeypatch.setenv("MOSA_BACKEND", "cuda")
    with pytest.raises(ValueError, match="MOSA_BACKEND"):
        dispatch.backend_name(CPU)
    # The ops go through the same choice, so they fail the same way.
    with pytest.raises(ValueError, match="MOSA_BACKEND"):
        mosa_kernels.sample_tokens(torch.randn(2, 5))


def test_forcing_triton_on_cpu_without_interpreter_raises(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("MOSA_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        dispatch.backend_name(CPU)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="MOSA_BACKEND=triton"):
        dispatch.backend_name(CPU)


def test_forcing_triton_on_cpu_with_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("MOSA_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.backend_name(CPU) == "triton"


@needs_cuda
def test_forcing_cpu_on_cuda_tensors_raises(monkeypatch):
    monkeypatch.setenv("MOSA_BACKEND", "cpu")
    with pytest.raises(RuntimeError, match="CPU tensors"):
        dispatch.backend_name(torch.device("cuda"))


def test_available_backends_on_cpu(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert mosa_kernels.available_backends("cpu") == ["triton", "cpu", "torch"]
    monkeypatch.delenv("TRITON_INTERPRET")
    assert mosa_kernels.available_backends(CPU) == ["cpu", "torch"]


def test_available_backends_elsewhere():
    # Neither the extension nor Triton runs on the meta device.
    assert mosa_kernels.available_backends("meta") == ["torch"]


@needs_cuda
def test_available_backends_on_cuda():
    assert mosa_kernels.available_backends("cuda") == ["triton", "torch"]

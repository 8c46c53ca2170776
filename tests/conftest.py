"""Test set-up: Triton kernels run in the interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, before any
test module imports mosa_kernels.
"""

import os
import shutil

if shutil.which("nvidia-smi") is None and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"

import importlib.util  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")


def _backend_params():
    params = [pytest.param("torch", id="torch")]
    if not ON_GPU:
        params.append(pytest.param("cpu", id="cpu"))
    triton_missing = importlib.util.find_spec("triton") is None
    params.append(
        pytest.param(
            "triton",
            id="triton",
            marks=pytest.mark.skipif(triton_missing, reason="triton is not installed"),
        )
    )
    return params


@pytest.fixture(params=_backend_params())
def backend(request, monkeypatch):
    """Runs the test once per backend, forcing it with MOSA_BACKEND.

    The C++ extension is part of every install, so a missing build fails the cpu run instead
    of skipping it.
    """
    monkeypatch.setenv("MOSA_BACKEND", request.param)
    return request.param


@pytest.fixture
def device():
    return DEVICE


_TINY_MODEL_DIRS = ("models", "sampling", "align", "eval", "tiny")


@pytest.fixture(autouse=True)
def one_thread_for_tiny_models(request):
    """Tests of tiny models (those folders, or marked ``tiny_model``) run torch on one thread:
    thread start-up would dominate them, worse on a loaded machine. Kernel tests keep every
    thread (the C++ kernels use them)."""
    marked = request.node.get_closest_marker("tiny_model") is not None
    if request.path.parent.name not in _TINY_MODEL_DIRS and not marked:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def poison_outputs(monkeypatch):
    """Make every ``torch.empty``/``empty_like`` during the test NaN (or -7777777) filled.

    Kernel wrappers allocate their outputs with these, so an element a kernel forgets to
    write shows up as NaN (or an impossible id) instead of passing by luck.
    """
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(tensor):
        if tensor.is_floating_point():
            return tensor.fill_(float("nan"))
        if tensor.dtype == torch.bool:
            return tensor.fill_(True)
        return tensor.fill_(-7777777)

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(real_empty_like(*a, **k)))

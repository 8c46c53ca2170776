"""Every backend holds to ``mosa_kernels.interface`` (docs/DESIGN.md §3), and drift is caught.

Three kinds of drift are checked: a kernel missing or with other parameter names than the
``Backend`` protocol; a C++ constant (state column, transfer rule, dtype code) numbered other
than its Python name; and a backend writing a sampling-state statistic into another column
than the one the interface names, which is what the ops read back.
"""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

from mosa_kernels import interface
from mosa_kernels.dispatch import kernels_for
from mosa_kernels.random import gumbel

BACKEND_MODULES = {
    "torch": "mosa_kernels.torch_kernels",
    "cpu": "mosa_kernels.cpu_kernels",
    "triton": "mosa_kernels.triton_kernels",
}


def _protocol_parameters() -> dict[str, list[str]]:
    """Each protocol kernel's parameter names, ``self`` left out."""
    return {
        name: list(inspect.signature(getattr(interface.Backend, name)).parameters)[1:]
        for name in interface.KERNELS
    }


def _signature_errors(module) -> list[str]:
    errors = []
    for name, expected in _protocol_parameters().items():
        kernel = getattr(module, name, None)
        if kernel is None:
            errors.append(f"{module.__name__} lacks {name}")
            continue
        actual = list(inspect.signature(kernel).parameters)
        if actual != expected:
            errors.append(f"{module.__name__}.{name} takes {actual}, the contract {expected}")
    return errors


def _cpp_constant_errors() -> list[str]:
    from mosa_kernels import _C

    expected = {
        "state_columns": {
            **{name: getattr(interface, name) for name in interface.STATE_COLUMNS},
            "STATE_WIDTH": interface.STATE_WIDTH,
        },
        "transfer_rules": {name: getattr(interface, name) for name in interface.TRANSFER_RULES},
        "dtype_codes": interface.DTYPE_CODES,
    }
    return [
        f"_C.{table}() = {getattr(_C, table)()}, interface: {numbers}"
        for table, numbers in expected.items()
        if getattr(_C, table)() != numbers
    ]


def _state_column_errors(kernels, device: torch.device) -> list[str]:
    """Runs one ``sample_update`` at T > 0 from a fresh state and checks each statistic in the
    column the interface gives it (at T > 0 every column holds a different number)."""
    gen = torch.Generator().manual_seed(0)
    rows, vocab, temperature, seed = 3, 40, 0.5, 1234
    logits = torch.randn(rows, vocab, generator=gen)
    state = torch.full((rows, interface.STATE_WIDTH), float("-inf"))
    state[:, interface.S] = 0.0
    state[:, interface.E] = 0.0
    best_index = torch.full((rows,), -1, dtype=torch.int64)
    no_ids = torch.empty(0, dtype=torch.int64, device=device)
    state, best_index = state.to(device), best_index.to(device)
    kernels.sample_update(
        logits.to(device), None, 0.0, 0, state, best_index, temperature, False, seed,
        no_ids, no_ids,
    )  # fmt: skip
    state, best_index = state.cpu(), best_index.cpu()

    noise = gumbel(seed, torch.arange(rows)[:, None], torch.arange(vocab)[None]).float()
    scores = logits / temperature + noise
    top = logits.max(1).values
    shifted = logits - top[:, None]
    expected = {
        "M": top,
        "S": shifted.exp().sum(1),
        "E": (shifted.exp() * shifted).sum(1),
        "TOP2": logits.topk(2, dim=1).values[:, 1],
        "BEST": scores.max(1).values,
        "BEST_C": logits.gather(1, scores.argmax(1, keepdim=True))[:, 0],
    }
    errors = []
    if not torch.equal(best_index, scores.argmax(1)):
        errors.append(f"best_index {best_index.tolist()}")
    for name, value in expected.items():
        column = getattr(interface, name)
        if not torch.allclose(state[:, column], value, rtol=1e-5, atol=1e-6):
            errors.append(f"column {name} = {column} holds {state[:, column].tolist()}")
    return errors


def test_protocol_lists_every_kernel():
    methods = {
        name
        for name, member in vars(interface.Backend).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }
    assert methods == set(interface.KERNELS)


def test_every_backend_module_implements_the_protocol(backend):
    module = importlib.import_module(BACKEND_MODULES[backend])
    assert _signature_errors(module) == []


def test_a_kernel_with_drifted_parameters_is_caught(monkeypatch):
    from mosa_kernels import torch_kernels

    def select_transfer(confidence, is_masked, k, factor, threshold):  # two swapped
        raise AssertionError("never called")

    monkeypatch.setattr(torch_kernels, "select_transfer", select_transfer)
    monkeypatch.delattr(torch_kernels, "kl_rows")
    errors = _signature_errors(torch_kernels)
    assert len(errors) == 2
    assert "select_transfer takes" in errors[0] and "lacks kl_rows" in errors[1]


def test_cpp_constants_match_the_interface():
    assert _cpp_constant_errors() == []


def test_a_renumbered_state_column_is_caught_against_cpp(monkeypatch):
    """The Python side renumbered in one place only: the C++ enum no longer agrees."""
    monkeypatch.setattr(interface, "BEST", interface.BEST_C)
    monkeypatch.setattr(interface, "BEST_C", interface.BEST)
    errors = _cpp_constant_errors()
    assert len(errors) == 1 and errors[0].startswith("_C.state_columns()")


def test_every_backend_writes_each_statistic_in_its_column(backend, device):
    assert _state_column_errors(kernels_for(device), device) == []


@pytest.mark.parametrize("moved", ["BEST", "TOP2"])
def test_a_statistic_in_another_column_is_caught(monkeypatch, device, moved):
    """The interface says one column, the compiled kernel writes another: the check fails."""
    monkeypatch.setenv("MOSA_BACKEND", "cpu" if device.type == "cpu" else "triton")
    other = interface.BEST_C if moved == "BEST" else interface.M
    monkeypatch.setattr(interface, moved, other)
    errors = _state_column_errors(kernels_for(device), device)
    assert any(error.startswith(f"column {moved} ") for error in errors)

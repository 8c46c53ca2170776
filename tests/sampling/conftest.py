"""Fixtures of the sampler tests (the builders live in ``sampling_builders``)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The models are tiny: thread start-up would dominate, worse on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Fixtures of the model tests: one tiny random model per family and its checkpoint folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_checkpoints import TINY_CONFIGS, tiny_model, write_sharded


@pytest.fixture(params=list(TINY_CONFIGS))
def family(request) -> str:
    return request.param


@pytest.fixture
def model(family):
    return tiny_model(family)


@pytest.fixture
def checkpoint(tmp_path, family, model) -> Path:
    """A two-shard checkpoint folder of ``model``."""
    return write_sharded(tmp_path / "ckpt", TINY_CONFIGS[family], model.state_dict())

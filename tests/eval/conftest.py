"""The embedded tiny model (``model``), its tokenizer and held-out harmful prompts, loaded
once for the evaluation tests that run it."""

from __future__ import annotations

import pytest

import mosa
import mosa.tiny
from mosa.text.prompts import load_tokenizer
from mosa.tiny import corpus


@pytest.fixture(scope="session")
def model():
    return mosa.load_model(mosa.tiny.path())


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(mosa.tiny.path())


@pytest.fixture(scope="session")
def held_out_harmful() -> list[str]:
    _, held_out = corpus.splits(seed=0)
    return [e.prompt for e in held_out["harmful"]]

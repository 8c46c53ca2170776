"""The model-family registry (``mosa.models.FAMILIES``): loading, ``from_hf`` and the eval
runner find a family through it, an unknown family is refused by name, and a family added to
the table is used end to end without other edits."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

import mosa.tiny
from mosa.cli import main
from mosa.eval.attacks import apply_attack
from mosa.eval.runner import respond
from mosa.models import (
    FAMILIES,
    DiffusionLM,
    LLaDAConfig,
    LLaDAModel,
    build_model,
    family_of,
    load_model,
)  # fmt: skip
from mosa.sampling import generate, sample_texts
from mosa.text.prompts import load_tokenizer

KNOWN = r"'llada' \(LLaDAModelLM\), 'Dream' \(DreamModel\)"


class DummyConfig(LLaDAConfig):
    """A third family's config: LLaDA's keys under another model type."""

    model_type = "dummy"
    architecture = "DummyLM"


class DummyModel(LLaDAModel):
    """A third family's module tree (LLaDA's layout)."""


class ThirdModel(DiffusionLM):
    """A family's model that no entry of the table names."""


SAMPLED = []


def dummy_sampler(model, ids, mask, **options):
    """The dummy family's sampler: LLaDA's, recording that it ran."""
    SAMPLED.append(options)
    return generate(model, ids, mask, **options)


@pytest.fixture
def dummy_family(monkeypatch):
    family = dataclasses.replace(
        FAMILIES["llada"], name="dummy", label="Dummy", config_class=DummyConfig,
        model_class=DummyModel, sampler=f"{__name__}:dummy_sampler",
    )  # fmt: skip
    monkeypatch.setitem(FAMILIES, "dummy", family)
    SAMPLED.clear()
    return family


def _tiny_copy(tmp_path, **config):
    """The embedded tiny model's folder with ``config`` written over its config.json."""
    folder = shutil.copytree(mosa.tiny.path(), tmp_path / "model")
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, **config}))
    return folder


def test_an_unknown_family_is_refused_naming_the_known_ones(tmp_path):
    config = {"model_type": "lladamoe", "architectures": ["LLaDAMoEModelLM"]}
    with pytest.raises(ValueError, match=f"unknown model type 'lladamoe'.*{KNOWN}"):
        build_model(config)
    folder = _tiny_copy(tmp_path, **config)
    with pytest.raises(ValueError, match=f"unknown model type 'lladamoe'.*{KNOWN}"):
        load_model(folder, device="cpu")
    with pytest.raises(SystemExit, match=f"^mosa sample: .*unknown model type .*{KNOWN}$"):
        main(["sample", str(folder), "--prompt", "hi", "--device", "cpu"])


def test_a_model_of_an_unregistered_family_is_never_decoded_as_another():
    third = ThirdModel.__new__(ThirdModel)  # the class alone decides; no weights needed
    tokenizer = load_tokenizer(mosa.tiny.path())
    message = "ThirdModel is no registered model family; mosa.models.FAMILIES holds LLaDAModel"
    with pytest.raises(ValueError, match=message):
        family_of(third)
    with pytest.raises(ValueError, match=message):
        respond(third, tokenizer, [apply_attack("none", "what is 1 plus 2 ?")])
    with pytest.raises(ValueError, match=message):
        sample_texts(third, tokenizer, ["what is 1 plus 2 ?"])


def test_a_registered_family_is_loaded_and_sampled_through_the_table(tmp_path, dummy_family):
    folder = _tiny_copy(tmp_path, model_type="dummy", architectures=["DummyLM"])
    model = load_model(folder, device="cpu")
    assert type(model) is DummyModel and type(model.config) is DummyConfig
    assert family_of(model) is dummy_family
    tokenizer = load_tokenizer(folder)
    settings = {"gen_length": 8, "block_length": 8, "steps": 8}
    (text,) = respond(model, tokenizer, [apply_attack("none", "what is 1 plus 2 ?")], **settings)
    (options,) = SAMPLED
    assert options["gen_length"] == 8 and options["block_length"] == 8
    tiny = load_model(mosa.tiny.path(), device="cpu")
    assert respond(tiny, tokenizer, [apply_attack("none", "what is 1 plus 2 ?")], **settings) == [
        text
    ]

"""The model-family registry (``mosa.models.FAMILIES``): loading, ``from_hf`` and the eval
runner find a family through it, an unknown family is refused by name, and a family added to
the table is used end to end without other edits."""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil

import pytest
from tiny_checkpoints import TINY_CONFIGS, config_over

import mosa.sampling.llada
import mosa.tiny
from mosa.cli import main
from mosa.eval.attacks import apply_attack
from mosa.eval.runner import respond
from mosa.models import (
    FAMILIES,
    DiffusionLM,
    LLaDAConfig,
    LLaDAModel,
    LLaDAMoEModel,
    build_model,
    family_of,
    load_model,
)  # fmt: skip
from mosa.models.families import family_of_config, resolve
from mosa.sampling import generate, sample_texts
from mosa.text.prompts import encode_prompts, load_tokenizer

KNOWN = (
    r"'llada' \(LLaDAModelLM\), 'Dream' \(DreamModel\), 'llada2_moe' \(LLaDA2MoeModelLM\), "
    r"'llada' \(LLaDAMoEModelLM\)"
)


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
    config = {"model_type": "olmoe", "architectures": ["OlmoeForCausalLM"]}
    with pytest.raises(ValueError, match=f"unknown model type 'olmoe'.*{KNOWN}"):
        build_model(config)
    folder = _tiny_copy(tmp_path, **config)
    with pytest.raises(ValueError, match=f"unknown model type 'olmoe'.*{KNOWN}"):
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


@pytest.mark.parametrize(
    ("edit", "family"),
    [
        ({}, "llada_moe"),  # model_type "llada", as the checkpoints say
        ({"model_type": "lladamoe"}, "llada_moe"),  # the dllm copy's name
        ({"model_type": None}, "llada_moe"),  # architectures alone
        ({"architectures": None}, "llada_moe"),  # the MoE keys alone
    ],
)
def test_llada_moe_is_told_from_dense_llada_by_its_keys(edit, family):
    config = {k: v for k, v in {**TINY_CONFIGS["llada_moe"], **edit}.items() if v is not None}
    assert family_of_config(config) is FAMILIES[family]
    assert type(build_model(config)) is LLaDAMoEModel
    assert family_of_config(TINY_CONFIGS["llada"]) is FAMILIES["llada"]
    assert (
        family_of_config({**TINY_CONFIGS["llada2"], "model_type": "llada21_moe"})
        is FAMILIES["llada2"]
    )


def test_a_config_two_families_claim_is_refused_naming_them(monkeypatch):
    claiming = dataclasses.replace(FAMILIES["llada"], name="twin")
    monkeypatch.setitem(FAMILIES, "twin", claiming)
    with pytest.raises(ValueError, match="claimed by the families llada, twin"):
        family_of_config(TINY_CONFIGS["llada"])


def test_the_moe_families_entries():
    """LLaDA-MoE decodes with LLaDA's generate and options (DiffuGuard too); LLaDA2 with the
    block-diffusion sampler (DiffuGuard on its steps too)."""
    llada, moe, llada2 = FAMILIES["llada"], FAMILIES["llada_moe"], FAMILIES["llada2"]
    assert (moe.sampler, moe.sampler_options, moe.diffuguard) == (
        llada.sampler, llada.sampler_options, True,
    )  # fmt: skip
    assert not moe.block_diffusion and llada2.block_diffusion and llada2.diffuguard
    assert llada2.sampler == "mosa.sampling.block_generate:block_generate"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_entry_names_a_sampler_taking_its_options(name):
    family = FAMILIES[name]
    if family.block_diffusion:
        pytest.importorskip("mosa.sampling.block_generate", reason="block_generate not merged yet")
    parameters = inspect.signature(resolve(family.sampler)).parameters
    taken = {family.length_keyword, family.trace_keyword, *family.sampler_options} - {"gen_length"}
    assert taken <= set(parameters), sorted(taken - set(parameters))


def test_a_llada_moe_model_is_sampled_by_llada_generate(monkeypatch):
    tokenizer = load_tokenizer(mosa.tiny.path())
    model = build_model(config_over("llada_moe", tokenizer), device="cpu").eval()
    calls = []
    real = mosa.sampling.llada.generate

    def recording(*args, **options):
        calls.append(options)
        return real(*args, **options)

    monkeypatch.setattr(mosa.sampling.llada, "generate", recording)
    settings = {"gen_length": 4, "block_length": 4, "steps": 4}
    (text,) = sample_texts(model, tokenizer, ["what is 1 plus 2 ?"], **settings)
    assert len(calls) == 1 and calls[0]["gen_length"] == 4
    ids, _ = encode_prompts(tokenizer, ["what is 1 plus 2 ?"], chat_template=True, device="cpu")
    expected = real(model, ids, steps=4, gen_length=4, block_length=4)
    assert text == tokenizer.decode(expected[0, ids.shape[1] :], skip_special_tokens=True)

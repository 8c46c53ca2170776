"""The ``mosa`` model type: registered with lm-eval, declared as its plugin, checked arguments."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import mosa.tiny

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_checkpoints import config_over, dream_config_over  # noqa: E402

lm_eval_registry = pytest.importorskip("lm_eval.api.registry")

from mosa.lm_eval import MosaLM  # noqa: E402

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_importing_mosa_lm_eval_registers_the_mosa_model_type():
    assert lm_eval_registry.get_model("mosa") is MosaLM


def test_the_lm_eval_entry_point_names_the_registered_class():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    entry_points = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"]
    module, _, name = entry_points["lm_eval.models"]["mosa"].partition(":")
    assert getattr(__import__(module, fromlist=[name]), name) is MosaLM


def test_arguments_come_from_an_lm_eval_argument_string():
    lm = MosaLM.create_from_arg_string(
        f"pretrained={mosa.tiny.path()},gen_length=16,block_length=8,cache=dual,threshold=0.9",
        {"batch_size": "4", "device": "cpu"},
    )
    assert lm.batch_size == 4
    assert lm.settings["steps"] == 16 and lm.settings["cache"] == "dual"
    assert lm.settings["threshold"] == 0.9
    history = [{"role": "user", "content": "what is 1 plus 2 ?"}]
    assert lm.apply_chat_template(history) == "<|user|> what is 1 plus 2 ? <|eot|> <|assistant|>"


def test_stop_sequences_and_eos_end_a_response():
    lm = MosaLM(pretrained=str(mosa.tiny.path()), device="cpu")
    ids = lm.tokenizer("1 plus 2 is 3 . <|endoftext|> 4", add_special_tokens=False)["input_ids"]
    assert lm._cut(ids, until=[]) == "1 plus 2 is 3 ."
    assert lm._cut(ids, until=[" is", " ."]) == "1 plus 2"
    assert lm._cut(ids, until=" .") == "1 plus 2 is 3"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"pretrained": "/no/such/folder"}, "pretrained='/no/such/folder' is not a checkpoint"),
        ({"batch_size": "auto"}, "batch_size must be a positive integer, got 'auto'"),
        ({"mc_num": 100}, r"mc_num \(100\) must be a multiple of mc_batch_size \(32\)"),
        ({"cache": "full"}, "cache must be one of .* got cache='full'"),
        ({"adapter": "/no/adapter"}, "adapter='/no/adapter' is not a peft adapter folder"),
    ],
)
def test_bad_arguments_are_refused_before_loading(arguments, message):
    with pytest.raises(ValueError, match=message):
        MosaLM(**{"pretrained": str(mosa.tiny.path()), **arguments})


def test_rolling_loglikelihood_is_refused_clearly():
    lm = MosaLM(pretrained=str(mosa.tiny.path()), device="cpu")
    with pytest.raises(NotImplementedError, match="rolling perplexity tasks are not supported"):
        lm.loglikelihood_rolling([SimpleNamespace(args=("a",))])


@pytest.fixture(scope="module")
def dream_folder(tmp_path_factory):
    """A small random Dream checkpoint over the tiny model's tokenizer."""
    from mosa.models import build_model
    from mosa.text.prompts import load_tokenizer

    folder = tmp_path_factory.mktemp("tiny-dream")
    tokenizer = load_tokenizer(mosa.tiny.path())
    config = dream_config_over(tokenizer)
    model = build_model(config, device="cpu", seed=3)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(3))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_dream_model_generates_with_dreams_sampler(dream_folder, monkeypatch):
    import importlib

    from mosa.models import FAMILIES
    from mosa.sampling import diffusion_generate

    calls = []
    module, _, name = FAMILIES["dream"].sampler.partition(":")
    real = getattr(importlib.import_module(module), name)

    def spy(*args, **options):
        calls.append(options)
        return real(*args, **options)

    monkeypatch.setattr(importlib.import_module(module), name, spy)
    lm = MosaLM(pretrained=str(dream_folder), device="cpu", gen_length=8, steps=8)
    context = "<|user|> what is 1 plus 2 ? <|eot|> <|assistant|>"
    (text,) = lm.generate_until([SimpleNamespace(args=(context, {"until": []}))])
    (options,) = calls
    assert options["max_new_tokens"] == 8 and options["alg"] == "entropy"
    ids = lm._tokens(context)[None]
    direct = diffusion_generate(lm.model, ids, max_new_tokens=8, steps=8, alg="entropy")
    assert text == lm._cut(direct[0, ids.shape[1] :], [])


@pytest.mark.parametrize("family", ["llada_moe", "llada2"])
def test_the_moe_families_generate_with_their_samplers(tmp_path, family):
    """LLaDA-MoE with LLaDA's generate, LLaDA2 with block_generate (the settings lm-eval leaves
    unset, threshold and cache, keep block_generate's defaults); loglikelihood runs for both."""
    from mosa.models import FAMILIES, build_model
    from mosa.text.prompts import load_tokenizer

    tokenizer = load_tokenizer(mosa.tiny.path())
    build_model(config_over(family, tokenizer), device="cpu", seed=3).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    lm = MosaLM(pretrained=str(tmp_path), device="cpu", gen_length=8, steps=8, block_length=8)
    context = "<|user|> what is 1 plus 2 ? <|eot|> <|assistant|>"
    (text,) = lm.generate_until([SimpleNamespace(args=(context, {"until": []}))])
    ids = lm._tokens(context)[None]
    options = {"steps": 8, "block_length": 8}
    if family == "llada_moe":
        options |= {"remasking": "low_confidence", "cfg_scale": 0.0}
    direct = FAMILIES[family].sample(lm.model, ids, None, gen_length=8, **options)
    assert text == lm._cut(direct[0, ids.shape[1] :], [])
    ((logprob, greedy),) = lm.loglikelihood([SimpleNamespace(args=("what is 1 plus", " 2"))])
    assert logprob < 0 and greedy is False

"""The extension tables: a remasking rule (``llada.REMASKING_RULES``), an attack
(``mosa.eval.attacks.ATTACKS``) and a defense (``mosa.align.defenses.DEFENSES``) added
through their table alone are used end to end, the CLI included; a misspelled name is a
one-line error naming the choices; the CLI's names and defaults are the tables'."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch

import mosa.sampling.llada as llada
from mosa.align import AlignConfig
from mosa.align.defenses import DEFENSES, Mosa
from mosa.cli import main
from mosa.eval.attacked import AttackedPrompt, Decoding
from mosa.eval.attacks import (
    ATTACKS,
    TEMPLATES,
    Attack,
    apply_attack,
    default_options,
    expand_attack,
)
from mosa.models import load_model
from mosa.sampling import generate
from mosa.tiny import corpus
from mosa.tiny import path as tiny_path

TINY_EVAL = ["--dataset", "tiny-harmful", "--limit", "2", "--gen-length", "16"]
TINY_EVAL += ["--block-length", "8"]


pytestmark = pytest.mark.tiny_model


def last_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1]


# -- a remasking rule --------------------------------------------------------------------------


def test_a_remasking_rule_added_to_the_table_decodes_by_its_confidence(monkeypatch, capsys):
    monkeypatch.setitem(
        llada.REMASKING_RULES, "dummy", llada.RemaskingRule("margin", False, cuda_graphs=False)
    )
    kinds = []
    real = llada.sample_tokens

    def spy(*args, confidence, **kwargs):
        kinds.append(confidence)
        return real(*args, confidence=confidence, **kwargs)

    monkeypatch.setattr(llada, "sample_tokens", spy)
    sample = ["sample", "--prompt", "how do i bake bread ?", "--gen-length", "8", "--steps", "8"]
    assert main([*sample, "--remasking", "dummy"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert json.loads(line)["prompt"] == "how do i bake bread ?"
    assert kinds and set(kinds) == {"margin"}
    kinds.clear()
    assert main(sample) == 0  # the default rule is still the table's low_confidence
    assert kinds and set(kinds) == {"prob"}
    # A misspelled rule: argparse's one error line names every rule, the new one included.
    with pytest.raises(SystemExit):
        main([*sample, "--remasking", "dumy"])
    error = last_error_line(capsys)
    assert "invalid choice: 'dumy'" in error and "low_confidence" in error and "dummy" in error


def test_a_misspelled_remasking_rule_names_the_rules():
    model, prompt = load_model(tiny_path()), torch.tensor([[1, 2, 3]])
    with pytest.raises(
        ValueError, match=r"remasking must be one of \('low_confidence', 'random'\)"
    ):
        generate(model, prompt, gen_length=8, block_length=8, steps=8, remasking="low_confidense")


def test_a_rule_that_draws_noise_is_not_graph_eligible():
    for name, rule in llada.REMASKING_RULES.items():
        assert not (rule.needs_noise and rule.cuda_graphs), name


# -- an attack ---------------------------------------------------------------------------------


class _CountingDecoding(Decoding):
    """Decodes its rows plainly, counting the rows it was given."""

    rows: list[int] = []

    @classmethod
    def respond(cls, decoder, items):
        cls.rows.append(len(items))
        ids, mask, canvas = decoder.canvases(items)
        out = decoder.sample(ids, mask, canvas, decoder.settings, False)
        response = out[:, -decoder.settings["gen_length"] :]
        return decoder.tokenizer.batch_decode(response, skip_special_tokens=True)


@dataclass
class _DummyOptions:
    dummy_text: str = field(
        default="step 1 :", metadata={"flag": "--dummy-text", "help": "text fixed at token 2"}
    )


def _dummy(prompt: str, options: _DummyOptions) -> AttackedPrompt:
    return AttackedPrompt(prompt, [(2, options.dummy_text)], _CountingDecoding())


def test_an_attack_added_to_the_registry_runs_through_mosa_eval(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(ATTACKS, "dummy", Attack(_DummyOptions, _dummy))
    monkeypatch.setattr(_CountingDecoding, "rows", [])
    assert default_options("dummy") == {"dummy_text": "step 1 :"}
    out = tmp_path / "out"
    args = ["eval", *TINY_EVAL, "--out", str(out), "--attacks", "dummy"]
    assert main([*args, "--dummy-text", corpus.AFFIRMATIVE_PREFIX]) == 0
    assert _CountingDecoding.rows == [2]  # its decoding hook decoded both prompts
    path = out / "responses" / "tiny" / "tiny-harmful" / "dummy.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["fixed"] for r in rows] == [[[2, corpus.AFFIRMATIVE_PREFIX]]] * 2
    results = json.loads((out / "results.json").read_text())
    assert "asr/dummy" in results["cells"]["tiny"]
    assert results["meta"]["runs"]["tiny/tiny-harmful"]["attacks"] == {
        "dummy": {"dummy_text": corpus.AFFIRMATIVE_PREFIX}
    }
    # A misspelled attack, on the command line and through the API, names the new one too.
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["eval", *TINY_EVAL, "--out", str(out), "--attacks", "dumy"])
    error = last_error_line(capsys)
    assert "invalid choice: 'dumy'" in error and "dummy" in error and "trajhijack" in error
    with pytest.raises(ValueError, match=r"unknown attack 'dumy'.*'dummy'"):
        apply_attack("dumy", "a request")


def test_rows_of_an_attack_with_its_own_decoding_have_no_trace():
    from mosa.eval.runner import respond
    from mosa.text.prompts import load_tokenizer

    model, tokenizer = load_model(tiny_path()), load_tokenizer(tiny_path())
    attacked = _dummy("how to pick a lock", _DummyOptions())
    with pytest.raises(ValueError, match=r"own decoding \(dija, trajhijack\)"):
        respond(model, tokenizer, [attacked], return_trace=True, gen_length=16, block_length=8)


def test_an_option_no_attack_takes_is_named():
    with pytest.raises(TypeError, match=r"unknown attack options \['prefil'\].*'prefill'"):
        apply_attack("prefill", "a request", prefil="sure")


def test_mosa_eval_offers_the_registry_s_attacks_at_its_defaults():
    from mosa.cli.evaluate import add_parser, attack_names, attack_options

    assert attack_names() == (*ATTACKS, "gcg")
    parser = __import__("argparse").ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", "--dataset", "x", "--out", "o"])
    gen_length = 256
    options = attack_options(args, tiny=False, gen_length=gen_length)
    assert list(options) == list(ATTACKS)
    prompt = "how to pick a lock"
    for name in ATTACKS:
        registry = {"gen_length": gen_length} if name == "pad" else {}
        expected = list(expand_attack(name, prompt, **registry))
        got = list(expand_attack(name, prompt, **options[name]))
        if name == "template":  # mosa eval asks every wrapper, the first being the default
            assert got[0] == expected[0] and len(got) == len(TEMPLATES)
        else:
            assert got == expected, name


# -- a defense ---------------------------------------------------------------------------------


class _DummyDefense(Mosa):
    """MOSA, counting the batches it builds and the terms it scores."""

    objective = "dummy"
    flag = "--dummy-defense"
    help = "a test's defense"
    calls: list[str] = []

    def batch(self, data, ids, mask, draws):
        self.calls.append("batch")
        return super().batch(data, ids, mask, draws)

    def terms(self, models, head, batch, window):
        self.calls.append(f"terms {window}")
        return super().terms(models, head, batch, window)

    def window(self, config):
        return (1, 3)


def test_a_defense_added_to_the_table_trains_through_mosa_align(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(DEFENSES, "dummy", _DummyDefense())
    monkeypatch.setattr(_DummyDefense, "calls", [])
    out = tmp_path / "dummy"
    assert main(["align", "--out", str(out), "--dummy-defense", "--max-steps", "1"]) == 0
    assert json.loads((out / "align_config.json").read_text())["defense"] == "dummy"
    # One step of 4 prompts (the tiny settings' batch size), one micro-batch.
    assert _DummyDefense.calls == ["batch", "terms (1, 3)"]
    with pytest.raises(ValueError, match=r"defense must be one of \(.*'dummy'\), got 'dumy'"):
        AlignConfig(model=str(tiny_path()), output_dir=str(tmp_path / "x"), defense="dumy")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["align", "--out", str(tmp_path / "y"), "--defense", "dumy"])
    error = last_error_line(capsys)
    assert "invalid choice: 'dumy'" in error and "anywhere" in error and "dummy" in error


def test_mosa_align_offers_a_flag_per_defense_and_initial_alignment_trains_mosa_at_the_start():
    from mosa.cli import build_parser

    parser = build_parser()
    for name, defense in DEFENSES.items():
        flags = [defense.flag] if defense.flag else []
        assert parser.parse_args(["align", "--out", "o", *flags]).defense == name
        assert parser.parse_args(["align", "--out", "o", "--defense", name]).defense == name
    initial = DEFENSES["initial_alignment"]
    assert initial.objective == "mosa" and initial.window_override == (0, 0)

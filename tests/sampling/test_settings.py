"""Sampler defaults have one home, ``mosa/sampling/settings.py``: every reader agrees with it,
and no other module of the package writes one down again."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from mosa.sampling import (
    DREAM_REFERENCE,
    LLADA2_REFERENCE,
    LLADA21_REFERENCE,
    LLADA_EVALUATION,
    LLADA_REFERENCE,
    TINY_BLOCK_EVALUATION,
    TINY_EVALUATION,
    BlockDiffusionSampling,
    DreamSampling,
    LLaDASampling,
    block_generate,
    diffusion_generate,
    generate,
)

MOSA = Path(__file__).resolve().parents[2] / "mosa"
SAMPLER_NAMES = {
    f.name
    for settings in (LLaDASampling, DreamSampling, BlockDiffusionSampling)
    for f in dataclasses.fields(settings)
}
# Settings with a sampler argument's name that are not sampler defaults.
NOT_SAMPLER_DEFAULTS = {
    ("align/trainer.py", "gen_length"),  # AlignConfig: the training canvas
    ("tiny/__init__.py", "gen_length"),  # ALIGN_SETTINGS: the tiny model's training canvas
    ("eval/gcg.py", "steps"),  # GCG's search steps
    ("models/families.py", "alg"),  # Dream's evaluation order, in the family table below sampling
    ("eval/judges/strongreject.py", "threshold"),  # a judge's score cut-off
}


def _defaults(function) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_the_reference_presets_hold_the_published_numbers():
    # LLaDA's generate.py and Dream's diffusion_generate, as published.
    assert LLADA_REFERENCE == LLaDASampling(128, 128, 128, 0.0, 0.0, "low_confidence")
    assert DREAM_REFERENCE == DreamSampling(steps=512, eps=1e-3, temperature=0.0, alg="origin")
    # LLaDA2.0's and LLaDA2.1's LLaDA2MoeModelLM.generate, as published.
    assert LLADA2_REFERENCE == BlockDiffusionSampling(
        gen_length=2048, block_length=32, steps=32, temperature=0.0, threshold=0.95,
        minimal_topk=1, editing_threshold=None, max_post_steps=16, num_to_transfer=1,
    )  # fmt: skip
    assert LLADA21_REFERENCE == LLADA2_REFERENCE.replace(editing_threshold=0.9)
    assert LLADA_EVALUATION == LLADA_REFERENCE.replace(block_length=32)
    assert TINY_EVALUATION.schedule() == {
        "gen_length": 40, "block_length": 8, "steps": 40, "temperature": 0.0
    }  # fmt: skip
    assert TINY_BLOCK_EVALUATION == LLADA2_REFERENCE.replace(gen_length=40, block_length=8, steps=8)
    assert set(TINY_BLOCK_EVALUATION.schedule()) <= set(_defaults(block_generate))


def test_the_samplers_signatures_read_the_reference_presets():
    llada, dream = _defaults(generate), _defaults(diffusion_generate)
    assert {k: llada[k] for k in dataclasses.asdict(LLADA_REFERENCE)} == dataclasses.asdict(
        LLADA_REFERENCE
    )
    assert {k: dream[k] for k in dataclasses.asdict(DREAM_REFERENCE)} == dataclasses.asdict(
        DREAM_REFERENCE
    )
    block = _defaults(block_generate)
    assert {k: block[k] for k in dataclasses.asdict(LLADA2_REFERENCE)} == dataclasses.asdict(
        LLADA2_REFERENCE
    )


def test_the_evaluations_read_the_evaluation_presets():
    from mosa.eval import runner
    from mosa.lm_eval.model import MosaLM
    from mosa.sampling.diffuguard import DiffuGuard
    from mosa.sampling.texts import DEFAULT_GEN_LENGTH
    from mosa.tiny import evaluate

    assert runner.SAMPLER_DEFAULTS == LLADA_EVALUATION.schedule()
    assert evaluate.SAMPLER_DEFAULTS == TINY_EVALUATION.schedule()
    assert evaluate.FAMILY_DEFAULTS == {
        "llada": TINY_EVALUATION.schedule(), "llada2": TINY_BLOCK_EVALUATION.schedule()
    }  # fmt: skip
    assert DEFAULT_GEN_LENGTH == LLADA_REFERENCE.gen_length
    calibrate = _defaults(DiffuGuard.calibrate)
    for name in ("steps", "gen_length", "block_length"):
        assert calibrate[name] == getattr(LLADA_EVALUATION, name)
    lm = _defaults(MosaLM.__init__)
    for name in ("gen_length", "block_length", "remasking", "cfg_scale", "temperature"):
        assert lm[name] == getattr(LLADA_EVALUATION, name)


def test_mosa_eval_help_states_the_presets_numbers(capsys):
    from mosa.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    tiny = TINY_EVALUATION
    assert f"defaults: {tiny.gen_length}/{tiny.block_length}/{tiny.steps} for the tiny" in text
    assert f"response canvas (default {LLADA_EVALUATION.gen_length})" in text
    assert f"default {LLADA_EVALUATION.block_length}, or --gen-length" in text


def test_mosa_align_flags_default_to_align_config(tmp_path):
    from mosa.align import AlignConfig
    from mosa.cli import build_parser

    args = build_parser().parse_args(["align", "--out", str(tmp_path)])
    fields = {f.name: f.default for f in dataclasses.fields(AlignConfig)}
    for name in ("beta", "lora_r", "lora_alpha", "epochs", "grad_accum", "seed", "save_every"):
        assert getattr(args, name) == fields[name], name


def _is_value(node) -> bool:
    # None stands for "derived from another setting" (lm-eval's steps), not a default number.
    return isinstance(node, ast.Constant) and node.value is not None


def _written_defaults(path: Path):
    """(name, line) of each constant given to a sampler argument's name in ``path``: a
    function's default, a dataclass field, or a dict literal's entry."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = [
                *zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True)
            ]
            pairs += [
                (a, d)
                for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
                if d is not None
            ]
            for arg, default in pairs:
                if arg.arg in SAMPLER_NAMES and _is_value(default):
                    yield arg.arg, default.lineno
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.target.id in SAMPLER_NAMES and _is_value(node.value):
                yield node.target.id, node.lineno
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value in SAMPLER_NAMES
                    and _is_value(value)
                ):
                    yield key.value, value.lineno


def test_no_sampler_default_is_written_twice():
    found = []
    for path in sorted(MOSA.rglob("*.py")):
        where = path.relative_to(MOSA).as_posix()
        if where == "sampling/settings.py":
            continue
        found += [
            f"{where}:{line} {name}"
            for name, line in _written_defaults(path)
            if (where, name) not in NOT_SAMPLER_DEFAULTS
        ]
    assert not found, f"sampler defaults outside mosa/sampling/settings.py: {found}"


def test_the_scan_finds_a_restated_default(tmp_path):
    restated = tmp_path / "restated.py"
    restated.write_text(
        "def f(steps=128, *, alg='origin'):\n    pass\n"
        "D = {'gen_length': 40}\n"
        "class C:\n    block_length: int = 32\n"
    )
    assert sorted(_written_defaults(restated)) == [
        ("alg", 1), ("block_length", 5), ("gen_length", 3), ("steps", 1)
    ]  # fmt: skip

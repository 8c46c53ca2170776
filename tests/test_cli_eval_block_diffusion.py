"""``mosa eval`` and ``mosa analyze`` on a LLaDA2 folder (block diffusion, ``block_generate``):
a small random LLaDA2 saved with the tiny model's tokenizer (so the tiny prompt sets and
judge serve it), a 20-token canvas in blocks of 8 (not a multiple: block_generate's last
block runs past the response)."""

from __future__ import annotations

import functools
import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import mosa.tiny
from mosa.cli import main
from mosa.models import build_model, load_model
from mosa.text.prompts import load_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent / "models"))
from tiny_checkpoints import config_over, random_weights  # noqa: E402

pytestmark = pytest.mark.tiny_model

SMALL = ["--limit", "2", "--gen-length", "20", "--block-length", "8", "--steps", "4"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    tokenizer = load_tokenizer(mosa.tiny.path())
    model = build_model(config_over("llada2", tokenizer), device="cpu", dtype=torch.float32)
    model.load_state_dict(random_weights(model, 3))
    with torch.no_grad():
        model.lm_head_weight.mul_(5)
        model.lm_head_weight[tokenizer.mask_token_id] = 0
    path = tmp_path_factory.mktemp("llada2") / "model"
    model.save_pretrained(path)
    for name in TOKENIZER_FILES:
        shutil.copy(mosa.tiny.path() / name, path / name)
    return path


def rows(out: Path, attack: str) -> list[dict]:
    path = out / "responses" / "model" / "tiny-harmful" / f"{attack}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_folder_is_a_block_diffusion_model(folder):
    from mosa.models.families import is_block_diffusion

    assert is_block_diffusion(load_model(folder))


def test_eval_every_attack_on_a_llada2_folder(folder, tmp_path, monkeypatch):
    module = importlib.import_module("mosa.sampling.block_generate")
    calls = []
    real = module.block_generate

    @functools.wraps(real)  # the runner reads the sampler's signature
    def spy(*args, **kw):
        calls.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(module, "block_generate", spy)
    out = tmp_path / "run"
    attacks = ["none", "prefill", "middle_prefill", "pad", "dija", "trajhijack", "gcg"]
    gcg = ["--gcg-steps", "1", "--gcg-candidates", "4", "--gcg-suffix-length", "3"]
    anchors = ["--pad-anchor", "sure ,", "0", "--pad-anchor", "step 1 :", "0.5"]
    argv = ["eval", str(folder), "--dataset", "tiny-harmful", "--out", str(out), *SMALL]
    assert main([*argv, "--attacks", *attacks, *gcg, *anchors, "--middle-position", "9"]) == 0
    assert calls and all(c["steps"] == 4 and c["block_length"] == 8 for c in calls)
    cell = json.loads((out / "results.json").read_text())["cells"]["model"]
    assert set(cell) == {f"asr/{a}" for a in attacks}
    assert all(r["response"].startswith("sure ,") for r in rows(out, "pad"))
    assert all(r["response"].startswith("sure , here is") for r in rows(out, "prefill"))
    assert all(r["attacked"] == f"{r['prompt']} {r['gcg_suffix']}" for r in rows(out, "gcg"))


def test_analyze_order_and_prefill_sweep_on_a_llada2_folder(folder, tmp_path):
    out = tmp_path / "analysis"
    assert main(["analyze", "order", str(folder), "--out", str(out), *SMALL]) == 0
    report = json.loads((out / "decoding_order.json").read_text())
    assert report["sampler"]["steps"] == 4
    for entry in report["sets"].values():
        # Blocks decode in order: the mean position rises from the first step to the last.
        means = [m for m in entry["mean_positions"] if m is not None]
        assert means[-1] > means[0] and entry["slope"] > 0
    sweep = ["analyze", "prefill-sweep", str(folder), "--out", str(out), *SMALL]
    assert main([*sweep, "--positions", "0", "12"]) == 0
    cell = json.loads((out / "prefill_sweep.json").read_text())["cells"]
    assert set(next(iter(cell.values()))) == {"asr/prefill@0", "asr/prefill@12"}


def test_a_lone_gen_length_keeps_one_step_per_block_token(folder, tmp_path):
    out = tmp_path / "analysis"
    argv = ["analyze", "order", str(folder), "--out", str(out), "--limit", "1"]
    assert main([*argv, "--gen-length", "12"]) == 0
    sampler = json.loads((out / "decoding_order.json").read_text())["sampler"]
    assert sampler["gen_length"] == 12 and sampler["steps"] == sampler["block_length"] == 8

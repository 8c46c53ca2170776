"""``mosa align`` output folders: one run at a time, the resume rules, damaged files named."""

from __future__ import annotations

import fcntl
import json
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mosa.tiny
from mosa.align import trainer
from mosa.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_checkpoints import tiny_family_folder, tiny_sentence_args  # noqa: E402

pytest.importorskip("peft")


def _align(out: Path, *extra: str) -> int:
    """The tiny model's run (its prompts and settings), a few steps."""
    return main(["align", "--out", str(out), *extra])


def _run_args(tmp_path: Path, family: str) -> list[str]:
    """The model and settings of a run: none for the tiny model (its own), else a tiny random
    ``family`` folder over the tiny model's tokenizer and prompts."""
    if family == "tiny":
        return []
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(mosa.tiny.align_prompts()[0][:16]) + "\n")
    folder = tiny_family_folder(tmp_path / family, family, seed=1)
    return [
        str(folder), "--prompts", str(prompts), "--gen-length", "14", "--window", "2", "5",
        "--batch-size", "2", "--lr", "1e-3", "--lora-r", "4", "--lora-alpha", "8",
        "--block-length", "4", "--lora-experts", *tiny_sentence_args(tmp_path),
    ]  # fmt: skip


def _refusal(capsys, out: Path, *extra: str) -> str:
    with pytest.raises(SystemExit) as refused:
        _align(out, *extra)
    message = str(refused.value)
    assert message.startswith("mosa align: ") and "\n" not in message
    return message


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _values(log: str) -> list[dict]:
    """The log's records without their timings."""
    timings = ("prompts_per_s", "tokens_per_s", "peak_memory_bytes")
    records = [json.loads(line) for line in log.splitlines()]
    return [{k: v for k, v in record.items() if k not in timings} for record in records]


def test_a_second_run_into_a_busy_folder_is_refused_at_once(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0}\n')

    def no_work(*args):
        raise AssertionError("the refused run loaded the tokenizer")

    monkeypatch.setattr(trainer, "load_tokenizer", no_work)
    with open(out / ".lock", "a") as first_run:
        fcntl.flock(first_run, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = _files(out)
        message = _refusal(capsys, out, "--max-steps", "1")
    assert "in use by another mosa align run" in message and "--out" in message
    assert _files(out) == before

    a_file = tmp_path / "a_file"
    a_file.write_text("kept")
    with pytest.raises(SystemExit, match="a_file: exists and is not a folder"):
        _align(a_file, "--max-steps", "1")  # the CLI's --out check, before the trainer's
    with pytest.raises(ValueError, match="is a file; give a folder for --out"):
        trainer.train(trainer.AlignConfig(model="unused", output_dir=str(a_file)), ["a prompt"])
    assert a_file.read_text() == "kept"


@pytest.mark.parametrize("family", ["tiny", "llada2"])
def test_ctrl_c_keeps_the_steps_done_and_a_rerun_resumes_to_the_whole_run(
    tmp_path, monkeypatch, capsys, family
):
    """A Ctrl-C (a real SIGINT, in-process) while step 1 runs: step 1 ends, a checkpoint is
    saved at step 2, one line says so, and the rerun ends where the uninterrupted run does.
    LLaDA2: its block-causal canvas, LoRA on the routed experts and the router loss."""
    run = _run_args(tmp_path, family)
    whole = tmp_path / "whole"
    assert _align(whole, *run, "--max-steps", "4") == 0
    step_once = trainer._train_step

    def ctrl_c_in_step_1(models, data, optimizer, config, step):
        if step == 1:
            signal.raise_signal(signal.SIGINT)
        return step_once(models, data, optimizer, config, step)

    out = tmp_path / "run"
    monkeypatch.setattr(trainer, "_train_step", ctrl_c_in_step_1)
    message = _refusal(capsys, out, *run, "--max-steps", "4")
    assert message == (
        "mosa align: interrupted at step 2; rerun the same command to resume from step 2 "
        f"({out / 'checkpoint'})"
    )
    assert _steps(out) == [0, 1]
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back

    monkeypatch.setattr(trainer, "_train_step", step_once)
    capsys.readouterr()
    assert _align(out, *run, "--max-steps", "4") == 0
    assert "resuming from step 2" in capsys.readouterr().out
    log = (out / "metrics.jsonl").read_text()
    assert _values(log) == _values((whole / "metrics.jsonl").read_text())
    want = load_file(whole / "adapter" / "adapter_model.safetensors")
    got = load_file(out / "adapter" / "adapter_model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_resume_refuses_changed_settings_and_allows_free_ones(tmp_path, capsys):
    out = tmp_path / "run"
    assert _align(out, "--max-steps", "3", "--save-every", "2") == 0  # checkpoint at step 2
    saved = _files(out)

    for extra, named in [
        (("--lr", "1e-3"), "lr was 0.0002, now 0.001"),
        (("--seed", "1"), "seed was 0, now 1"),
        (("--batch-size", "2"), "global batch (processes x batch_size x grad_accum) was 4, now 2"),
    ]:
        message = _refusal(capsys, out, "--max-steps", "3", *extra)
        assert named in message and "--no-resume" in message and "--out" in message, message
    message = _refusal(capsys, out, "--max-steps", "1")
    assert "at step 2 but this run stops at step 1" in message and "--no-resume" in message
    assert _files(out) == saved  # refused before anything was written

    capsys.readouterr()
    # Free on resume: how often to checkpoint, and a longer run; step 2 is redone from the
    # checkpoint, and the log keeps steps 0 and 1.
    assert _align(out, "--max-steps", "4", "--save-every", "3") == 0
    assert "resuming from step 2" in capsys.readouterr().out
    assert _steps(out) == [0, 1, 2, 3]
    assert json.loads((out / "align_config.json").read_text())["save_every"] == 3

    assert _align(out, "--max-steps", "2", "--lr", "1e-3", "--no-resume") == 0
    assert "resuming" not in capsys.readouterr().out
    assert _steps(out) == [0, 1]
    assert not (out / "checkpoint").exists()  # the earlier run's, which no rerun may resume


def test_a_torn_last_log_line_is_dropped_and_its_step_redone(tmp_path, capsys):
    out = tmp_path / "run"
    assert _align(out, "--max-steps", "3", "--save-every", "2") == 0
    log = out / "metrics.jsonl"
    whole = log.read_text()
    log.write_text(whole[: whole.rindex("\n", 0, -1) + 20])  # a kill while step 2 was logged
    assert _align(out, "--max-steps", "3", "--save-every", "2") == 0
    assert _values(log.read_text()) == _values(whole)


def test_damaged_log_or_checkpoint_is_named_with_the_way_out(tmp_path, capsys):
    out = tmp_path / "run"
    assert _align(out, "--max-steps", "3", "--save-every", "2") == 0
    log = out / "metrics.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(lines[0] + "{garbage\n" + "".join(lines[1:]))
    message = _refusal(capsys, out, "--max-steps", "3")
    assert f"{log} line 2 is damaged" in message and "--no-resume" in message

    log.write_text("".join(lines))
    weights = out / "checkpoint" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    message = _refusal(capsys, out, "--max-steps", "3")
    assert f"{weights} is unreadable" in message and "--no-resume" in message

    state = out / "checkpoint" / "state.json"
    state.write_text('{"step": 2}')
    message = _refusal(capsys, out, "--max-steps", "3")
    assert f"{state} lacks its step or settings" in message and "--no-resume" in message

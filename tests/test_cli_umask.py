"""Every file-writing ``mosa`` command, on the embedded tiny model with its smallest settings,
under umask 0022 and 0077: each file it writes gets 0o666 and each folder 0o777 less the umask,
as any file the user writes (safetensors and peft make owner-only files of their own, and a
copied file keeps its source's mode). ``mosa demo`` is checked by its own tests
(tests/test_cli_demo.py), one under each umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mosa.cli import main

pytest.importorskip("peft")
pytestmark = pytest.mark.tiny_model

SMALL = ["--limit", "2", "--gen-length", "16", "--block-length", "8"]


def run_under(mask: int, argv: list[str]) -> None:
    previous = os.umask(mask)
    try:
        assert main(argv) == 0
    finally:
        os.umask(previous)


def wrong_modes(root: Path, mask: int) -> dict[str, str]:
    """``root`` and every entry under it whose mode is not 0o666 (a file) or 0o777 (a folder)
    less ``mask``, with its mode; ``{}`` when all are right."""
    entries = [root, *root.rglob("*")] if root.is_dir() else [root]
    wrong = {}
    for path in entries:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode != (0o777 if path.is_dir() else 0o666) & ~mask:
            wrong[str(path.relative_to(root.parent))] = oct(mode)
    return wrong


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask-0022", "umask-0077"])
def test_every_command_writes_with_the_umask_s_permissions(tmp_path, mask, capsys):
    commands = {
        "sample.jsonl": ["sample", "--prompt", "w1 w2", "--gen-length", "8", "--steps", "8"],
        "eval": ["eval", "--dataset", "tiny-harmful", "--attacks", "none", *SMALL],
        "analyze": ["analyze", "order", *SMALL],
        "align": ["align", "--max-steps", "2", "--save-every", "1", "--export-merged"],
    }
    wrong = {}
    for name, argv in commands.items():
        out = tmp_path / name
        run_under(mask, [*argv, "--out", str(out)])
        wrong.update(wrong_modes(out, mask))
    capsys.readouterr()
    assert wrong == {}
    # The files the umask regression was found in are among those checked.
    assert (tmp_path / "align" / "checkpoint" / "trainable.safetensors").is_file()
    assert (tmp_path / "align" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "align" / "merged" / "tokenizer.json").is_file()

"""Output files and folders written atomically get the permissions the umask gives; JSON
written atomically is valid JSON even with NaN in it."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest

from mosa.models.files import write_file_atomic, write_folder, write_json_atomic


@pytest.fixture(params=[(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)], ids=["022", "077"])
def umask(request):
    """``(file_mode, folder_mode)`` expected under the umask set for the test (then restored)."""
    mask, file_mode, folder_mode = request.param
    previous = os.umask(mask)
    yield file_mode, folder_mode
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_file_atomic_follows_the_umask(tmp_path, umask):
    file_mode, folder_mode = umask
    path = write_file_atomic(tmp_path / "new" / "out.jsonl", "{}\n")
    assert mode(path) == file_mode
    assert mode(path.parent) == folder_mode
    write_file_atomic(path, "{}\n{}\n")  # replacing a file gives the same
    assert mode(path) == file_mode
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.jsonl"]


def test_write_json_atomic_writes_nan_as_null(tmp_path):
    data = {"fits": {"r2": math.nan}, "mean_positions": [0.5, math.nan, 2.0]}
    path = write_json_atomic(tmp_path / "order.json", data)
    text = path.read_text()
    assert "NaN" not in text and text.endswith("\n")
    assert json.loads(text) == {"fits": {"r2": None}, "mean_positions": [0.5, None, 2.0]}


def test_write_folder_follows_the_umask(tmp_path, umask):
    file_mode, folder_mode = umask
    folder = tmp_path / "checkpoint"
    for _ in range(2):  # created, then replaced
        write_folder(folder, lambda staging: (staging / "config.json").write_text("{}"))
        assert mode(folder) == folder_mode
        assert mode(folder / "config.json") == file_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]

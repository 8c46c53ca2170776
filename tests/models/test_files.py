"""Output files and folders written atomically get the permissions the umask gives."""

from __future__ import annotations

import os
import stat

import pytest

from mosa.models.files import write_file_atomic, write_folder


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


def test_write_folder_follows_the_umask(tmp_path, umask):
    file_mode, folder_mode = umask
    folder = tmp_path / "checkpoint"
    for _ in range(2):  # created, then replaced
        write_folder(folder, lambda staging: (staging / "config.json").write_text("{}"))
        assert mode(folder) == folder_mode
        assert mode(folder / "config.json") == file_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]

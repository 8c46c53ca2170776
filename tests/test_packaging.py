"""What a fresh install from ``pyproject.toml`` brings: the README's main command
(``pip install torch==2.13.0 -e . && mosa demo``) must give the plots the README promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11 on

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_matplotlib_is_a_dependency_not_an_extra():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    names = {re.split(r"[<>=!~;\s\[]", requirement)[0] for requirement in project["dependencies"]}
    assert "matplotlib" in names


def test_every_tiny_checkpoint_folder_is_package_data():
    import mosa.tiny

    patterns = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]
    shipped = set(patterns["mosa.tiny"])
    package = Path(mosa.tiny.__file__).resolve().parent
    for family, folder in mosa.tiny.FOLDERS.items():
        assert f"{folder}/*" in shipped, family
        files = {f.name for f in (package / folder).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= files, family

"""The package's layers import only downwards (README, Layout): a module may import the layers
before its own and the shared helpers, never a layer above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MOSA = Path(__file__).resolve().parents[1] / "mosa"
LAYERS = ("models", "text", "sampling", "align", "eval", "tiny")  # the CLI and demo.py: on top
HELPERS = {"datasets", "distributed"}  # leaf modules any layer may use


def imported_packages(layer: str) -> set[str]:
    """The top-level ``mosa`` packages and modules that the files of ``layer`` import."""
    found = set()
    for path in (MOSA / layer).rglob("*.py"):
        package = path.relative_to(MOSA).parent.parts
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)]
                names = [*base, *(node.module.split(".") if node.module else [])]
                found.add(names[0] if names else node.names[0].name)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mosa."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.ImportFrom) and node.module == "mosa":
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(
                    alias.name.split(".")[1]
                    for alias in node.names
                    if alias.name.startswith("mosa.")
                )
    return found - {layer}


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_only_downwards(layer):
    allowed = set(LAYERS[: LAYERS.index(layer)]) | HELPERS
    assert imported_packages(layer) <= allowed

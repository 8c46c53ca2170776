"""Every reference to the design document resolves inside the repository.

Docstrings, comments and docs cite sections as ``docs/DESIGN.md §N`` (or ``§N.M``; a list may
go on ``§6, §11``). This fails when a cited section has no heading in docs/DESIGN.md, when the
document is named by a bare "DESIGN" (as in "DESIGN §4.2"), or when anything points into the
folder outside the repository that the project was developed beside, except its optional data
folder (``mosa.datasets.shared_data_dir``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("mosa", "mosa_kernels", "benchmarks", "tests", "csrc", "docs", "README.md")
TEXT_SUFFIXES = {".py", ".md", ".sh", ".cpp", ".h", ".toml", ".txt", ".cfg"}
DESIGN = ROOT / "docs" / "DESIGN.md"

SECTION_REF = re.compile(r"§\s*(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)*)\.? ", re.MULTILINE)
# "DESIGN" as a word, not the file name DESIGN.md (identifiers like DESIGN_SHAPE do not match).
BARE_DESIGN = re.compile(r"(?<![\w/])DESIGN(?![\w.])")
OUTSIDE = re.compile(r"\.\./shared(?!/data\b)")


def _scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [p for p in candidates if p.is_file() and p.suffix in TEXT_SUFFIXES]
    return [p for p in files if p != Path(__file__).resolve()]


def design_sections(text: str) -> set[str]:
    """The section numbers of the design document's ``##`` / ``###`` headings."""
    return set(HEADING.findall(text))


def reference_errors(path: str, text: str, sections: set[str]) -> list[str]:
    """What is wrong with the design references in one file's text."""
    errors = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        where = f"{path}:{line_number}"
        errors += [
            f"{where}: §{number} is not a section of docs/DESIGN.md"
            for number in SECTION_REF.findall(line)
            if number not in sections
        ]
        if BARE_DESIGN.search(line):
            errors.append(f"{where}: name the design document docs/DESIGN.md: {line.strip()}")
        if OUTSIDE.search(line):
            errors.append(f"{where}: points outside the repository: {line.strip()}")
    return errors


def test_design_document_has_sections_1_to_12():
    sections = design_sections(DESIGN.read_text())
    assert {str(n) for n in range(1, 13)} <= sections
    assert {"4.1", "4.2", "4.3", "4.4"} <= sections


def test_every_design_reference_in_the_tree_resolves():
    sections = design_sections(DESIGN.read_text())
    errors = []
    for path in _scanned_files():
        errors += reference_errors(str(path.relative_to(ROOT)), path.read_text(), sections)
    assert errors == []


@pytest.mark.parametrize(
    "line, problem",
    [
        ("See docs/DESIGN.md §13 for more.", "§13 is not a section"),
        ("the rule of docs/DESIGN.md §4.9", "§4.9 is not a section"),
        ("(docs/DESIGN.md §6, §14)", "§14 is not a section"),
        ("the spec, DESIGN §4.2", "name the design document"),
        ("measured as in DESIGN's table", "name the design document"),
        ("read ../shared/DESIGN.md first", "points outside the repository"),
    ],
)
def test_a_broken_reference_is_reported(line, problem):
    sections = design_sections(DESIGN.read_text())
    errors = reference_errors("x.py", line, sections)
    assert any(problem in error for error in errors), errors


@pytest.mark.parametrize(
    "line",
    [
        "(docs/DESIGN.md §4.2)",
        "docs/DESIGN.md §6, §11",
        "DESIGN_LOGPROB_SHAPE = {}",
        "the layers are in [DESIGN.md](DESIGN.md) §2",
        "default ../shared/data next to the repository",
    ],
)
def test_a_good_reference_passes(line):
    assert reference_errors("x.py", line, design_sections(DESIGN.read_text())) == []


def test_every_path_the_model_guide_names_exists():
    """docs/ADDING_A_MODEL.md walks a new family through files by path: each must exist
    (``<family>`` stands for the new one)."""
    guide = (ROOT / "docs" / "ADDING_A_MODEL.md").read_text()
    named = set(re.findall(r"`((?:mosa|tests|docs)/[\w/.<>-]+)`", guide))
    assert {"mosa/models/families.py", "tests/models/test_families.py"} <= named
    missing = [p for p in sorted(named) if "<" not in p and not (ROOT / p).exists()]
    assert missing == []

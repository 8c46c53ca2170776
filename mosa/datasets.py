"""Readers for local evaluation and training files in their published formats (docs/DESIGN.md §8).

Every reader parses defensively: a malformed file raises ``ValueError`` naming the file, the
line or row, and the expected columns or fields. Nothing is unpickled and nothing is fetched
from the network.

- ``read_prompts``: a list of prompts from any of the formats below (CSV, JSONL, JSON, text).
- ``load_advbench``, ``load_harmbench``, ``load_jailbreakbench``, ``load_sorrybench``,
  ``load_xstest``, ``load_alpaca``, ``load_gsm8k``: one small dataclass per row.
- ``shared_data_dir``: where the project's copies of these files live, if anywhere.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Column / field names that hold the prompt, in the order they are preferred. Matching is
# case-insensitive: AdvBench says ``goal``, JailbreakBench ``Goal``, HarmBench ``Behavior``
# (JailbreakBench also has a ``Behavior`` column, a short name, hence ``goal`` first).
CSV_PROMPT_COLUMNS = ("goal", "behavior", "prompt", "turns", "question")
JSON_PROMPT_FIELDS = ("prompt", "goal", "instruction", "question", "turns", "behavior")


@dataclass(frozen=True)
class AdvBenchBehavior:
    goal: str
    target: str


@dataclass(frozen=True)
class HarmBenchBehavior:
    behavior: str
    category: str
    id: str
    semantic_category: str = ""
    context: str = ""


@dataclass(frozen=True)
class JailbreakBenchBehavior:
    goal: str
    target: str
    behavior: str
    category: str
    source: str = ""


@dataclass(frozen=True)
class SorryBenchPrompt:
    prompt: str
    category: str
    question_id: str = ""
    prompt_style: str = ""


@dataclass(frozen=True)
class XSTestPrompt:
    prompt: str
    type: str
    label: str  # "safe" or "unsafe"
    id: str = ""


@dataclass(frozen=True)
class AlpacaExample:
    instruction: str
    input: str
    output: str

    @property
    def prompt(self) -> str:
        """The instruction, then the input after a blank line when there is one."""
        return _join_input(self.instruction, self.input)


@dataclass(frozen=True)
class GSM8KProblem:
    question: str
    answer: str  # the worked solution, ending in "#### <number>"
    final: str  # that number, commas removed


def shared_data_dir() -> Path | None:
    """``$MOSA_DATA_DIR`` if set, else ``../shared/data`` next to the repository root (the
    folder above the ``mosa`` package) when it exists, else None."""
    env = os.environ.get("MOSA_DATA_DIR")
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


# ---------------------------------------------------------------------------------------------
# Generic prompt files


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts of a local file, chosen by its suffix.

    - ``.csv``: the first recognised column (case-insensitive) of ``goal`` (AdvBench,
      JailbreakBench), ``Behavior`` (HarmBench), ``prompt`` (XSTest), ``turns`` (SORRY-Bench:
      a JSON list, the first turn is taken), ``question``.
    - ``.jsonl``: per line, an object with one of ``prompt``, ``goal``, ``instruction`` (an
      ``input`` field is appended after a blank line), ``question``, ``turns``, ``Behavior``;
      or a bare JSON string.
    - ``.json``: a list of such objects or strings.
    - anything else: plain text, one prompt per non-empty line.

    Rows are not filtered: for HarmBench's standard behaviors alone, or XSTest's safe prompts,
    use ``load_harmbench`` / ``load_xstest``. Raises ``ValueError`` on a malformed file or one
    without prompts.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        prompts = _csv_prompts(path)
    elif suffix == ".jsonl":
        prompts = [_record_prompt(path, where, rec) for where, rec in jsonl_records(path)]
    elif suffix == ".json":
        prompts = [_record_prompt(path, where, rec) for where, rec in _json_records(path)]
    else:
        prompts = [line.strip() for line in _read_text(path).split("\n") if line.strip()]
    if not prompts:
        raise ValueError(f"{path} contains no prompts")
    return prompts


def _csv_prompts(path: Path) -> list[str]:
    header, rows = _csv_rows(path)
    lowered = {name.strip().lower(): name for name in header}
    column = next((lowered[c] for c in CSV_PROMPT_COLUMNS if c in lowered), None)
    if column is None:
        raise ValueError(
            f"{path}: no prompt column in the header {header}; expected one of "
            f"{list(CSV_PROMPT_COLUMNS)} (case-insensitive)"
        )
    prompts = []
    for where, row in rows:
        value = row[column]
        if column.strip().lower() == "turns":
            value = _first_turn(path, where, _parse_json_cell(path, where, column, value))
        prompts.append(_nonempty(path, where, column, value))
    return prompts


def _record_prompt(path: Path, where: str, record) -> str:
    if isinstance(record, str):
        return _nonempty(path, where, "prompt", record)
    if not isinstance(record, dict):
        raise ValueError(
            f"{path}, {where}: expected a JSON object or string, got {type(record).__name__}"
        )
    lowered = {key.lower(): key for key in record}
    field = next((lowered[f] for f in JSON_PROMPT_FIELDS if f in lowered), None)
    if field is None:
        raise ValueError(
            f"{path}, {where}: no prompt field among {sorted(record)}; expected one of "
            f"{list(JSON_PROMPT_FIELDS)}"
        )
    value = record[field]
    if field.lower() == "turns":
        value = _first_turn(path, where, value)
    text = _nonempty(path, where, field, value)
    if field.lower() == "instruction" and "input" in lowered:
        extra = record[lowered["input"]]
        if extra is not None and not isinstance(extra, str):
            raise ValueError(f"{path}, {where}: field 'input' must be a string")
        text = _join_input(text, extra or "")
    return text


# ---------------------------------------------------------------------------------------------
# Specific benchmarks


def load_advbench(path: str | os.PathLike) -> list[AdvBenchBehavior]:
    """AdvBench ``harmful_behaviors.csv``: columns ``goal``, ``target``."""
    path = Path(path)
    return [
        AdvBenchBehavior(goal=get("goal"), target=get("target"))
        for get in _csv_getters(path, ("goal", "target"))
    ]


def load_harmbench(
    path: str | os.PathLike, categories: tuple[str, ...] | None = ("standard",)
) -> list[HarmBenchBehavior]:
    """HarmBench ``harmbench_behaviors_text_*.csv``: columns ``Behavior``,
    ``FunctionalCategory``, ``BehaviorID`` (``SemanticCategory``, ``ContextString`` optional).

    ``categories`` keeps rows whose ``FunctionalCategory`` is listed (``standard``,
    ``contextual``, ``copyright``); None keeps every row.
    """
    path = Path(path)
    if isinstance(categories, str):
        raise TypeError(f"categories must be a tuple of names, e.g. ({categories!r},)")
    rows = [
        HarmBenchBehavior(
            behavior=get("Behavior"),
            category=get("FunctionalCategory"),
            id=get("BehaviorID"),
            semantic_category=get("SemanticCategory", required=False),
            context=get("ContextString", required=False),
        )
        for get in _csv_getters(path, ("Behavior", "FunctionalCategory", "BehaviorID"))
    ]
    if categories is None:
        return rows
    return [row for row in rows if row.category in categories]


def load_jailbreakbench(path: str | os.PathLike) -> list[JailbreakBenchBehavior]:
    """JailbreakBench JBB-Behaviors ``harmful-behaviors.csv`` / ``benign-behaviors.csv``:
    columns ``Goal``, ``Behavior``, ``Category`` (``Target``, ``Source`` optional)."""
    path = Path(path)
    return [
        JailbreakBenchBehavior(
            goal=get("Goal"),
            target=get("Target", required=False),
            behavior=get("Behavior"),
            category=get("Category"),
            source=get("Source", required=False),
        )
        for get in _csv_getters(path, ("Goal", "Behavior", "Category"))
    ]


def load_sorrybench(path: str | os.PathLike) -> list[SorryBenchPrompt]:
    """SORRY-Bench ``question.jsonl``: per line an object with ``turns`` (a list; the first
    turn is the prompt) and ``category`` (``question_id``, ``prompt_style`` optional)."""
    path = Path(path)
    items = []
    for where, record in jsonl_records(path):
        if not isinstance(record, dict) or "turns" not in record or "category" not in record:
            raise ValueError(
                f"{path}, {where}: expected an object with fields 'turns' and 'category'"
            )
        items.append(
            SorryBenchPrompt(
                prompt=_nonempty(path, where, "turns", _first_turn(path, where, record["turns"])),
                category=str(record["category"]),
                question_id=str(record.get("question_id", "")),
                prompt_style=str(record.get("prompt_style", "")),
            )
        )
    return _nonempty_list(path, items)


def load_xstest(path: str | os.PathLike) -> list[XSTestPrompt]:
    """XSTest ``xstest_prompts.csv``: columns ``prompt``, ``type``, ``label`` (``safe`` or
    ``unsafe``). Without a ``label`` column (the v1 file) the label follows the type: the
    ``contrast_*`` types are the unsafe prompts."""
    path = Path(path)
    items = []
    for get in _csv_getters(path, ("prompt", "type")):
        kind = get("type")
        label = get("label", required=False) or (
            "unsafe" if kind.startswith("contrast") else "safe"
        )
        if label not in ("safe", "unsafe"):
            raise ValueError(
                f"{path}, {get.where}: label must be 'safe' or 'unsafe', got {label!r}"
            )
        items.append(XSTestPrompt(prompt=get("prompt"), type=kind, label=label, id=get.id))
    return items


def load_alpaca(path: str | os.PathLike) -> list[AlpacaExample]:
    """Alpaca data as JSON (a list) or JSONL: fields ``instruction``, ``output``, ``input``
    (optional, may be empty)."""
    path = Path(path)
    records = _json_records(path) if path.suffix.lower() == ".json" else jsonl_records(path)
    items = []
    for where, record in records:
        if not isinstance(record, dict) or "instruction" not in record or "output" not in record:
            raise ValueError(
                f"{path}, {where}: expected an object with fields 'instruction', 'output' "
                "and optionally 'input'"
            )
        fields = {key: record.get(key) or "" for key in ("instruction", "input", "output")}
        for key, value in fields.items():
            if not isinstance(value, str):
                raise ValueError(f"{path}, {where}: field {key!r} must be a string")
        items.append(AlpacaExample(**fields))
    return _nonempty_list(path, items)


_GSM8K_FINAL = re.compile(r"####\s*(\S+)\s*$")


def load_gsm8k(path: str | os.PathLike) -> list[GSM8KProblem]:
    """GSM8K ``test.jsonl``: fields ``question`` and ``answer``; the answer ends with
    ``#### <number>``, which becomes ``final`` with its thousands commas removed."""
    path = Path(path)
    items = []
    for where, record in jsonl_records(path):
        if not isinstance(record, dict) or "question" not in record or "answer" not in record:
            raise ValueError(f"{path}, {where}: expected an object with 'question' and 'answer'")
        answer = record["answer"]
        match = _GSM8K_FINAL.search(answer) if isinstance(answer, str) else None
        if match is None:
            raise ValueError(f"{path}, {where}: the answer does not end with '#### <number>'")
        items.append(
            GSM8KProblem(
                question=_nonempty(path, where, "question", record["question"]),
                answer=answer,
                final=match.group(1).replace(",", ""),
            )
        )
    return _nonempty_list(path, items)


# ---------------------------------------------------------------------------------------------
# Parsing helpers


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ValueError(f"{path} is not a file; give the path of a local dataset file")
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        # newline="": keep line ends as written (CRLF inside quoted CSV fields is content).
        with open(path, encoding="utf-8-sig", newline="") as file:
            return file.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err})") from None


def _csv_rows(path: Path) -> tuple[list[str], Iterator[tuple[str, dict[str, str]]]]:
    """The header and, lazily, ``(where, row)`` per record. The csv module is used because
    quoted fields may span lines (HarmBench's ``ContextString``)."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as err:
        raise ValueError(f"{path}, line {reader.line_num}: malformed CSV ({err})") from None
    if not header or not any(name.strip() for name in header):
        raise ValueError(f"{path} has no CSV header line")

    def rows():
        number = 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise ValueError(f"{path}, line {reader.line_num}: malformed CSV ({err})") from None
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            number += 1
            where = f"row {number} (line {reader.line_num})"
            if len(cells) != len(header):
                raise ValueError(
                    f"{path}, {where}: {len(cells)} fields, but the header has {len(header)} "
                    f"({header})"
                )
            yield where, dict(zip(header, cells, strict=True))

    return header, rows()


class _RowGetter:
    """Reads one CSV row's columns by case-insensitive name, with errors that say where."""

    def __init__(self, path: Path, where: str, row: dict[str, str], columns: dict[str, str]):
        self.path, self.where, self.row, self.columns = path, where, row, columns

    def __call__(self, name: str, *, required: bool = True) -> str:
        column = self.columns.get(name.lower())
        if column is None:
            return ""
        value = self.row[column]
        return _nonempty(self.path, self.where, column, value) if required else value.strip()

    @property
    def id(self) -> str:
        return self("id", required=False)


def _csv_getters(path: Path, required: tuple[str, ...]) -> list[_RowGetter]:
    header, rows = _csv_rows(path)
    columns = {name.strip().lower(): name for name in header}
    missing = [name for name in required if name.lower() not in columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; the header is {header}, expected at least "
            f"{list(required)}"
        )
    return _nonempty_list(path, [_RowGetter(path, where, row, columns) for where, row in rows])


def jsonl_records(path: Path) -> Iterator[tuple[str, object]]:
    """``("line N", record)`` for each non-empty line of a JSON-lines file (ValueError naming
    the line on bad JSON)."""
    # split("\n"), not splitlines(): JSON strings may hold a raw U+2028, which is no line end.
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
        yield f"line {number}", record


def _json_records(path: Path) -> list[tuple[str, object]]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return [(f"item {index}", record) for index, record in enumerate(data)]


def _parse_json_cell(path: Path, where: str, column: str, value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise ValueError(
            f"{path}, {where}: column {column!r} must hold a JSON list of strings"
        ) from None


def _first_turn(path: Path, where: str, turns) -> str:
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
        raise ValueError(f"{path}, {where}: 'turns' must be a non-empty list of strings")
    return turns[0]


def _nonempty(path: Path, where: str, field: str, value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{path}, {where}: {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{path}, {where}: {field!r} is empty")
    return value.strip()


def _nonempty_list(path: Path, items: list) -> list:
    if not items:
        raise ValueError(f"{path} contains no rows")
    return items


def _join_input(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra.strip()}" if extra.strip() else instruction

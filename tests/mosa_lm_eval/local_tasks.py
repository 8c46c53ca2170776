"""lm-eval task YAML over a local JSON-lines file, so the tests run offline."""

from __future__ import annotations

from pathlib import Path


def local_task(name: str, data: Path, output_type: str, rest: str) -> str:
    """The YAML of task ``name`` reading its test split from ``data``, prompting with each
    document's ``context``; ``rest`` is the task's own lines (target, choices, metrics)."""
    return f"""\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output_type}
doc_to_text: "{{{{context}}}}"
{rest}"""

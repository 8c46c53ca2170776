"""``python -m mosa.lm_eval`` on bad ``--model_args``: one line naming the problem, a non-zero
exit, no traceback (run in-process: the model is refused before any task data is read)."""

from __future__ import annotations

import sys

import pytest
from local_tasks import local_task

import mosa.tiny

pytest.importorskip("lm_eval")

pytestmark = pytest.mark.slow  # each case starts lm-eval (~6-12 s on 2 cores)

TASK_LINES = """\
doc_to_target: "{{answer}}"
metric_list:
  - metric: exact_match
"""


@pytest.mark.parametrize(
    ("model_args", "message"),
    [
        ("pretrained={tiny},bogus_key=1", "unknown model_args key 'bogus_key'; the keys are "),
        ("pretrained={tiny},gen_length=abc", "gen_length must be a positive integer, got 'abc'"),
        ("gen_length=8", "pretrained=None is not a checkpoint folder"),
        ("pretrained={missing}", "is not a checkpoint folder; pass pretrained=PATH"),
    ],
    ids=["unknown-key", "not-a-number", "no-pretrained", "wrong-pretrained"],
)
def test_bad_model_args_are_one_line(tmp_path, monkeypatch, model_args, message):
    from mosa.lm_eval.__main__ import main

    task = local_task("tiny_never_read", tmp_path / "none.jsonl", "generate_until", TASK_LINES)
    (tmp_path / "tiny_never_read.yaml").write_text(task)
    model_args = model_args.format(tiny=mosa.tiny.path(), missing=tmp_path / "missing")
    argv = ["mosa.lm_eval", "--model", "mosa", "--model_args", model_args, "--device", "cpu"]
    argv += ["--tasks", "tiny_never_read", "--include_path", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as failed:
        main()
    text = str(failed.value)
    assert text.startswith("python -m mosa.lm_eval: mosa lm-eval model: ") and "\n" not in text
    assert message in text  # a SystemExit of one line: Python prints it, not a traceback

"""An lm-eval run of the ``mosa`` model type on the embedded tiny model, offline.

Two local tasks over held-out prompts of the tiny corpus, in the tiny chat format: sums
answered by generation (exact match) and colour look-ups scored as multiple choice by the
masked log-likelihood (four choices, so chance is 25 %).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from local_tasks import local_task

import mosa.tiny
from mosa.tiny import corpus

pytest.importorskip("lm_eval")

EXAMPLES = 4
COLORS = sorted({color for color, _ in corpus.WORLD.values()})

TASK_LINES = {
    ("sums", "generate_until"): """\
doc_to_target: "{{answer}}"
generation_kwargs:
  until: [" ."]
metric_list:
  - metric: exact_match
""",
    ("colors", "multiple_choice"): """\
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
""",
}


def _chat(tokenizer, prompt: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def _write_tasks(folder: Path) -> None:
    from mosa.text.prompts import load_tokenizer

    tokenizer = load_tokenizer(mosa.tiny.path())
    _, held_out = corpus.splits(seed=0)
    sums = [e for e in held_out["benign"] if e.task == "sum"][:EXAMPLES]
    looks = [e for e in held_out["benign"] if e.task == "lookup" and "color" in e.prompt]
    rows = {
        "sums": [
            {"context": _chat(tokenizer, e.prompt), "answer": e.response.removesuffix(" .")}
            for e in sums
        ],
        "colors": [],
    }
    for i, e in enumerate(looks[:EXAMPLES]):
        thing, color = e.response.split()[1], e.response.split()[3]
        others = [c for c in COLORS if c != color]
        choices = [f"{c} ." for c in others[i : i + 3] + [color]]
        if i % 2:  # the answer first in half the documents, last in the others
            choices.insert(0, choices.pop())
        rows["colors"].append(
            {
                "context": f"{_chat(tokenizer, e.prompt)} the {thing} is",
                "choices": choices,
                "label": choices.index(f"{color} ."),
            }
        )
    for (name, output_type), lines in TASK_LINES.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows[name]))
        task = local_task(f"tiny_{name}", data, output_type, lines)
        (folder / f"tiny_{name}.yaml").write_text(task)


@pytest.mark.slow
def test_lm_eval_runs_the_tiny_model_through_the_mosa_model_type(tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    _write_tasks(tasks)
    model_args = (
        f"pretrained={mosa.tiny.path()},gen_length=8,block_length=8,steps=8,"
        "mc_num=2,mc_batch_size=2"
    )
    env = dict(
        os.environ,
        HF_HOME=str(tmp_path / "hf"),
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(Path(mosa.__file__).parents[1]), *sys.path]),
    )
    command = [
        sys.executable, "-m", "mosa.lm_eval", "--model", "mosa", "--model_args", model_args,
        "--tasks", "tiny_sums,tiny_colors", "--include_path", str(tasks),
        "--batch_size", "4", "--device", "cpu", "--output_path", str(tmp_path / "out"),
    ]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    assert results["tiny_colors"]["acc,none"] > 0.5  # chance: 0.25
    assert results["tiny_sums"]["exact_match,none"] >= 0.75

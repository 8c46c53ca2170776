"""``mosa eval`` and ``mosa analyze`` end to end on the embedded tiny model: small prompt counts
and a 16-token canvas, one process and two (torchrun)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mosa.cli import main
from mosa.datasets import shared_data_dir

SMALL = ["--limit", "3", "--gen-length", "16", "--block-length", "8"]


pytestmark = pytest.mark.tiny_model


def responses(out: Path, attack: str, variant: str = "tiny", dataset: str = "tiny-harmful"):
    path = out / "responses" / variant / dataset / f"{attack}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def cells(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())["cells"]


def test_eval_attacks_on_the_tiny_model(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["eval", "--dataset", "tiny-harmful", "--out", str(out), *SMALL]
    gcg = ["--gcg-steps", "2", "--gcg-candidates", "8", "--gcg-suffix-length", "4"]
    assert (
        main(
            [
                *args,
                "--attacks",
                "none",
                "prefill",
                "mask_interleave",
                "gcg",
                *gcg,
                "--skeleton",
                "step 1 :",
                "step 2 :",
                "--spacing",
                "8",
            ]
        )
        == 0
    )
    row = cells(out)["tiny"]
    assert set(row) == {"asr/none", "asr/prefill", "asr/mask_interleave", "asr/gcg"}
    assert all(cell["n"] == 3 and 0 <= cell["value"] <= 1 for cell in row.values())
    prefilled = responses(out, "prefill")
    assert len(prefilled) == 3 and all(
        r["response"].startswith("sure , here is") for r in prefilled
    )
    assert all(r["jailbroken"] in (True, False) for r in prefilled)
    searched = responses(out, "gcg")
    assert all(r["attacked"] == f"{r['prompt']} {r['gcg_suffix']}" for r in searched)
    assert "| tiny |" in (out / "results.md").read_text()
    assert (out / "asr.png").is_file()
    assert "ASR prefill (%)" in capsys.readouterr().out

    # A second run into the same folder adds its row to the table.
    assert main([*args, "--attacks", "none", "--variant", "again"]) == 0
    assert set(cells(out)) == {"tiny", "again"}


def test_eval_dllm_attacks_on_the_tiny_model(tmp_path):
    out = tmp_path / "run"
    args = ["eval", "--dataset", "tiny-harmful", "--out", str(out), *SMALL]
    anchors = ["--pad-anchor", "sure ,", "0", "--pad-anchor", "step 1 :", "0.5"]
    attacks = ["--attacks", "pad", "dija", "trajhijack", "--hijack-rounds", "2"]
    assert main([*args, *attacks, *anchors]) == 0
    row = cells(out)["tiny"]
    assert set(row) == {"asr/pad", "asr/dija", "asr/trajhijack"}
    assert all(cell["n"] == 3 for cell in row.values())
    # pad: the anchors at token 0 and at half of the 16-token canvas.
    padded = responses(out, "pad")
    assert all(r["fixed"] == [[0, "sure ,"], [8, "step 1 :"]] for r in padded)
    assert all(r["response"].startswith("sure ,") and "step 1 :" in r["response"] for r in padded)
    # dija: the tiny template's slots in the prompt; the response starts at the first slot.
    for r in responses(out, "dija"):
        assert r["attacked"].startswith(r["prompt"]) and r["attacked"].count("<mask:4>") == 3
        assert not r["response"].startswith("step 1")
    # trajhijack: the shipped model refuses these, so every response is hijacked.
    from mosa.tiny import corpus

    hijacked = responses(out, "trajhijack")
    assert all(r["response"].startswith(corpus.AFFIRMATIVE_PREFIX) for r in hijacked)
    used = json.loads((out / "results.json").read_text())["meta"]["runs"]["tiny/tiny-harmful"]
    assert used["attacks"]["pad"] == {
        "gen_length": 16, "anchors": [["sure ,", 0], ["step 1 :", 0.5]]
    }  # fmt: skip
    assert used["attacks"]["trajhijack"]["rounds"] == 2


def test_eval_default_attacks_are_all_but_gcg():
    from mosa.cli.evaluate import ATTACK_NAMES, DEFAULT_ATTACKS

    assert {"pad", "dija", "trajhijack"} <= set(DEFAULT_ATTACKS)
    assert set(DEFAULT_ATTACKS) == set(ATTACK_NAMES) - {"gcg"}


def test_eval_english_attack_options_place_pad_in_the_run_s_canvas():
    from mosa.cli.evaluate import add_parser, attack_options
    from mosa.eval import attacks, dija, trajhijack

    parser = __import__("argparse").ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", "--dataset", "x", "--out", "o"])
    options = attack_options(args, tiny=False, gen_length=256)
    assert options["pad"] == {"anchors": attacks.DEFAULT_PAD_ANCHORS, "gen_length": 256}
    assert options["dija"] == {"dija_template": dija.DEFAULT_DIJA_TEMPLATE}
    assert options["trajhijack"]["hijack_prefix"] == trajhijack.DEFAULT_HIJACK_PREFIX
    assert apply_attack_fixed("pad", options) == [(1, "Step 1:"), (128, "Step 2:")]
    flags = ["--pad-anchor", "Sure", "3", "--dija-template", "{prompt} A: <mask:5>"]
    flags += ["--hijack-prefix", "Okay", "--hijack-rounds", "3"]
    args = parser.parse_args(["eval", "--dataset", "x", "--out", "o", *flags])
    options = attack_options(args, tiny=False, gen_length=64)
    assert options["pad"] == {"anchors": [("Sure", 3)], "gen_length": 64}
    assert options["dija"]["dija_template"] == "{prompt} A: <mask:5>"
    assert (options["trajhijack"]["hijack_prefix"], options["trajhijack"]["rounds"]) == ("Okay", 3)


def apply_attack_fixed(name, options):
    from mosa.eval import apply_attack

    return apply_attack(name, "a request", **options[name]).fixed


def test_eval_checks_the_dllm_attacks_before_sampling(tmp_path):
    out = tmp_path / "run"
    args = ["eval", "--dataset", "tiny-harmful", "--out", str(out), *SMALL]
    # pad: "step 1 :" at 14 overflows the 16-token canvas; none would have run first.
    with pytest.raises(SystemExit, match=r"^--attacks pad: fixed text 'step 1 :' at position 14"):
        main([*args, "--attacks", "none", "pad", "--pad-anchor", "step 1 :", "14"])
    with pytest.raises(SystemExit, match=r"^--attacks pad: .* at position 14 .* overflows"):
        main([*args, "--attacks", "none", "pad", "--pad-anchor", "step 1 :", "0.9"])
    # dija: an 81-word request and a <mask:4> slot fit with 40 tokens (88 + 40 = 128), but
    # the canvas from the slot is 4 + 2 + 40 = 46 tokens rounded up to 48: 82 + 48 > 128.
    prompts = tmp_path / "long.txt"
    prompts.write_text(" ".join(["step"] * 81) + "\n")
    long = ["eval", "--dataset", str(prompts), "--out", str(out), "--attacks", "none", "dija"]
    with pytest.raises(SystemExit, match=r"^--attacks dija: .*canvas of 48 tokens after the 82"):
        main([*long, "--dija-template", "{prompt} <mask:4>", "--gen-length", "40"])
    assert not (out / "responses").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--pad-anchor", "step 1 :", "1.5"], r"PLACE 1.5 is a fraction .* \[0, 1\)"),
        (["--pad-anchor", "step 1 :", "-2"], "PLACE -2 must be a token index >= 0"),
        (["--pad-anchor", "step 1 :", "half"], "PLACE must be an int token index"),
        (["--hijack-rounds", "0"], "--hijack-rounds: must be >= 1"),
    ],
)
def test_eval_bad_dllm_attack_flags_are_one_line(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        main(["eval", "--dataset", "tiny-harmful", "--out", str(tmp_path), *extra])
    assert re.search(message, capsys.readouterr().err)


def test_eval_utility_and_over_refusal(tmp_path):
    out = tmp_path / "run"
    for dataset in ("tiny-benign", "tiny-risky"):
        assert main(["eval", "--dataset", dataset, "--out", str(out), *SMALL]) == 0
    row = cells(out)["tiny"]
    assert set(row) == {"utility/tiny-benign", "over_refusal/tiny-risky"}
    benign = responses(out, "none", dataset="tiny-benign")
    assert all({"answer", "prediction"} <= set(r) for r in benign)


def test_eval_refuses_or_truncates_a_prompt_too_long_for_the_model(tmp_path):
    prompts = tmp_path / "long.txt"
    prompts.write_text(" ".join(["step"] * 150) + "\n")  # the tiny model holds 128 tokens
    args = ["eval", "--dataset", str(prompts), "--attacks", "none", *SMALL]
    with pytest.raises(SystemExit, match="max_sequence_length \\(128\\); .*--truncate-prompt left"):
        main([*args, "--out", str(tmp_path / "refused")])
    assert not (tmp_path / "refused" / "responses").exists()
    out = tmp_path / "truncated"
    with pytest.warns(UserWarning, match="truncated to its last 112"):
        assert main([*args, "--out", str(out), "--truncate-prompt", "left"]) == 0
    (row,) = responses(out, "none", dataset="long")
    assert row["response"].strip()  # the response columns, whatever the kept prompt's length
    assert (
        json.loads((out / "results.json").read_text())["meta"]["runs"]["tiny/long"]["sampler"][
            "truncate"
        ]
        == "left"
    )


def test_eval_checks_every_attack_s_prompt_lengths_before_sampling(tmp_path):
    prompts = tmp_path / "long.txt"
    prompts.write_text(" ".join(["step"] * 100) + "\n")  # fits plain, not in every wrapper
    out = tmp_path / "run"
    args = ["eval", "--dataset", str(prompts), "--attacks", "none", "template", *SMALL]
    with pytest.raises(SystemExit, match=r"^--attacks template: the prompt \(113 tokens\)"):
        main([*args, "--out", str(out)])
    assert not (out / "responses").exists()


def test_eval_reads_shared_datasets(tmp_path):
    folder = shared_data_dir()
    if folder is None or not (folder / "gsm8k_test.jsonl").is_file():
        pytest.skip("no shared data folder with gsm8k_test.jsonl (set MOSA_DATA_DIR)")
    out = tmp_path / "run"
    small = ["--limit", "2", "--gen-length", "8", "--block-length", "8"]
    assert main(["eval", "--dataset", "gsm8k", "--out", str(out), *small]) == 0
    assert (
        main(
            [
                "eval",
                "--dataset",
                "advbench",
                "--attacks",
                "none",
                "--out",
                str(out),
                "--judge",
                "keyword",
                *small,
            ]
        )
        == 0
    )
    row = cells(out)["tiny"]
    assert row["utility/gsm8k"]["n"] == 2 and row["asr/none"]["n"] == 2
    assert len(responses(out, "none", dataset="advbench")) == 2


def test_eval_merges_an_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    import mosa
    import mosa.tiny

    base = mosa.load_model(mosa.tiny.path())
    lora = peft.get_peft_model(
        base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=base.lora_target_modules)
    )
    lora.save_pretrained(tmp_path / "run" / "adapter")  # LoRA B starts at 0: merged == base
    out = tmp_path / "eval"
    args = ["eval", "--dataset", "tiny-harmful", "--attacks", "none", "--out", str(out), *SMALL]
    assert main([*args, "--adapter", str(tmp_path / "run" / "adapter")]) == 0
    assert main(args) == 0
    assert responses(out, "none", variant="run") == responses(out, "none")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "nope"], "unknown dataset and no such file"),
        (
            ["--dataset", "tiny-harmful", "--attacks", "middle_prefill", "--middle-position", "14"],
            "overflows the canvas",
        ),
        (["--dataset", "tiny-benign", "--attacks", "prefill"], "use --attacks none"),
        (["--dataset", "tiny-harmful", "--adapter", "."], "not a peft adapter folder"),
        (["--dataset", "tiny-harmful", "--block-length", "5"], "a multiple of --block-length"),
        (["--dataset", "tiny-harmful", "--gcg-target", "xyzzy", "--attacks", "gcg"], "not know"),
        (["--dataset", "tiny-harmful", "--attacks", "none", "--judge", "tiny", "tiny"], "once"),
        (
            ["--dataset", "tiny-harmful", "--attacks", "dija", "--dija-template", "x <mask:4>"],
            r"--attacks dija: the dija template must be a string with exactly one '\{prompt\}'",
        ),
        (
            ["--dataset", "tiny-harmful", "--attacks", "dija", "--dija-template", "{prompt} x"],
            "--attacks dija: template gave no <mask:N> slot",
        ),
        (
            ["--dataset", "tiny-harmful", "--attacks", "trajhijack", "--hijack-prefix", "xyzzy"],
            "--attacks trajhijack: --hijack-prefix: .* does not know",
        ),
        (
            ["--dataset", "tiny-harmful", "--attacks", "pad", "--dija-rewriter", "."],
            "--dija-rewriter is for the dija attack",
        ),
        (
            ["--dataset", "tiny-harmful", "--attacks", "dija", "--dija-rewriter", "/no/such"],
            "--dija-rewriter: /no/such is not a model folder",
        ),
    ],
)
def test_eval_bad_input(tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        main(["eval", "--out", str(tmp_path), "--gen-length", "16", *extra])


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "MODEL", "--dataset", "tiny-harmful"],
        ["analyze", "order", "MODEL"],
        ["align", "MODEL", "--prompts", "prompts.csv"],
        ["demo"],
    ],
    ids=lambda command: command[0],
)
def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path, command):
    afile = tmp_path / "afile"
    afile.write_text("")
    import mosa.tiny

    model = str(mosa.tiny.path())  # a real folder: only --out is wrong, found before loading it
    args = [model if arg == "MODEL" else arg for arg in command]
    with pytest.raises(SystemExit, match=r"^--out .*afile: exists and is not a folder"):
        main([*args, "--out", str(afile)])


def test_a_second_eval_into_a_busy_out_is_refused_and_loses_nothing(tmp_path):
    """A run that holds ``--out`` (here: its lock, taken by the test) makes a second run into
    the same folder stop at once, before loading the model: the first run's results.json is
    left as it stands and nothing else is written."""
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    previous = b'{"written by": "the first run"}\n'
    (out / "results.json").write_bytes(previous)
    args = ["eval", "--dataset", "tiny-harmful", "--out", str(out), *SMALL]
    with open(out / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit, match=r"^mosa eval: .*run is in use by another mosa eval"):
            main([*args, "--variant", "second"])
    assert (out / "results.json").read_bytes() == previous
    assert sorted(path.name for path in out.iterdir()) == [".lock", "results.json"]


def test_eval_keeps_the_responses_when_the_judge_fails(tmp_path, monkeypatch):
    from mosa.eval import Judge, Verdict

    class Unreachable(Judge):
        def judge(self, prompt, response):
            return Verdict.failed("connection refused")

    monkeypatch.setattr(
        "mosa.cli.evaluate.build_judges", lambda args, tiny: {"unreachable": Unreachable()}
    )
    out = tmp_path / "run"
    args = ["eval", "--dataset", "tiny-harmful", "--attacks", "none", "--out", str(out), *SMALL]
    with pytest.raises(SystemExit, match="judge errors .*; the responses are in .*none.jsonl"):
        main(args)
    rows = responses(out, "none")
    assert len(rows) == 3 and all(isinstance(row["response"], str) for row in rows)


def test_eval_with_two_judges_reports_their_agreement(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["eval", "--dataset", "tiny-harmful", "--out", str(out), *SMALL]
    assert main([*args, "--attacks", "none", "prefill", "--judge", "tiny", "keyword"]) == 0
    table = cells(out)
    assert set(table) == {"tiny (tiny)", "tiny (keyword)"}
    assert set(table["tiny (keyword)"]) == {"asr/none", "asr/prefill"}
    rows = responses(out, "prefill")
    assert all(set(row["verdicts"]) == {"tiny", "keyword"} for row in rows)
    assert all(row["jailbroken"] == row["verdicts"]["tiny"]["jailbroken"] for row in rows)
    folder = out / "responses" / "tiny" / "tiny-harmful"
    agreement = (folder / "agreement.md").read_text()
    assert "| tiny / keyword | 6 |" in agreement and "## prefill" in agreement
    disagreed = [
        json.loads(line) for line in (folder / "disagreements.jsonl").read_text().splitlines()
    ]
    every = [(a, r) for a in ("none", "prefill") for r in responses(out, a)]
    expected = [
        (a, r["response"])
        for a, r in every
        if r["verdicts"]["tiny"]["jailbroken"] != r["verdicts"]["keyword"]["jailbroken"]
    ]
    assert [(d["attack"], d["response"]) for d in disagreed] == expected
    assert "Cohen's kappa" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("judge", "message"),
    [
        ("harmbench", "needs its model folder"),
        ("harmbench:/no/such/folder", "no such folder"),
        ("judgy", "unknown judge 'judgy'"),
        ("keyword:.", "takes no folder"),
    ],
)
def test_eval_bad_judge_is_one_line(tmp_path, capsys, judge, message):
    with pytest.raises(SystemExit):
        main(["eval", "--dataset", "tiny-harmful", "--out", str(tmp_path), "--judge", judge])
    assert message in capsys.readouterr().err


def test_eval_judge_timeout_reaches_the_http_judge(tmp_path):
    from mosa.cli import build_parser
    from mosa.cli.eval_options import build_judges

    http = ["--judge", "http", "--judge-endpoint", "http://127.0.0.1:9/v1", "--judge-model", "m"]
    args = ["eval", "--dataset", "tiny-harmful", "--out", str(tmp_path), *http]
    parsed = build_parser().parse_args([*args, "--judge-timeout", "2.5"])
    assert build_judges(parsed, tiny=True)["http"].timeout == 2.5
    for bad in ("0", "inf", "nan"):
        parsed = build_parser().parse_args([*args, "--judge-timeout", bad])
        with pytest.raises(SystemExit, match="^--judge http: timeout must be a finite number"):
            build_judges(parsed, tiny=True)


def test_eval_names_the_data_folder_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MOSA_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(SystemExit, match="does not exist; set MOSA_DATA_DIR"):
        main(["eval", "--dataset", "advbench", "--out", str(tmp_path)])


@pytest.mark.slow
def test_two_processes_give_the_same_responses(tmp_path):
    attacks = ["--attacks", "none", "gcg", "--gcg-steps", "2", "--gcg-candidates", "8"]
    args = ["eval", "--dataset", "tiny-harmful", *attacks, *SMALL]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*launcher, "-m", "mosa.cli", *args, "--out", str(tmp_path / "two")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    for attack in ("none", "gcg"):
        assert responses(tmp_path / "two", attack) == responses(tmp_path / "one", attack)


def test_analyze_order_and_prefill_sweep(tmp_path, capsys):
    out = tmp_path / "analysis"
    assert main(["analyze", "order", "--out", str(out), *SMALL]) == 0
    report = json.loads((out / "decoding_order.json").read_text())
    assert set(report["sets"]) == {"benign", "harmful"}
    for entry in report["sets"].values():
        assert entry["prompts"] == 3 and len(entry["mean_positions"]) == 16
        assert entry["slope"] > 0 and 0 <= entry["r2"] <= 1
    printed = capsys.readouterr().out
    assert "slope" in printed and "R²" in printed
    assert (out / "decoding_order.png").is_file()

    sweep = ["analyze", "prefill-sweep", "--out", str(out), *SMALL]
    assert main([*sweep, "--positions", "0", "8"]) == 0
    row = json.loads((out / "prefill_sweep.json").read_text())["cells"]["tiny"]
    assert set(row) == {"asr/prefill@0", "asr/prefill@8"}
    assert "ASR prefill@8 (%)" in (out / "prefill_sweep.md").read_text()
    assert (out / "prefill_sweep.png").is_file()
    with pytest.raises(SystemExit, match="overflows the canvas"):
        main([*sweep, "--positions", "15"])


def test_analyze_gcg_positions(tmp_path, capsys):
    out = tmp_path / "analysis"
    args = ["analyze", "gcg-positions", "--out", str(out), "--gcg-steps", "1", *SMALL]
    assert main([*args, "--limit", "1"]) == 0
    report = json.loads((out / "gcg_positions.json").read_text())
    assert set(report["positions"]) == {"0", "10"}
    assert all(len(entry["searches"]) == 1 for entry in report["positions"].values())
    assert "target at  10: ASR" in capsys.readouterr().out

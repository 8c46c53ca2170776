"""``mosa demo --quick`` end to end: trains both variants and writes the table and plots."""

from __future__ import annotations

import json

import pytest
from test_cli_umask import run_under, wrong_modes

from mosa import tiny
from mosa.cli import main
from mosa.demo import SWEEPS

pytest.importorskip("peft")


@pytest.mark.slow
def test_demo_quick_writes_results(tmp_path, capsys):
    out = tmp_path / "demo"
    # Under 0077 a copied file must not keep its source's 0o644; the --all test below runs
    # under 0022, where an owner-only (0o600) file is wrong. tests/test_cli_umask.py checks the
    # other commands under both.
    run_under(0o077, ["demo", "--quick", "--out", str(out)])
    assert wrong_modes(out, 0o077) == {}
    tmp_path = out
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["cells"]) == ["original", "MOSA", "initial alignment"]
    attacks = ("none", "prefill", "middle_prefill", "template", "mask_interleave")
    expected = [f"asr/{a}" for a in attacks] + ["utility/tiny_tasks", "over_refusal"]
    for variant, cells in results["cells"].items():
        assert variant in printed
        assert sorted(cells) == sorted(expected)
        assert all(0.0 <= cell["value"] <= 1.0 and cell["n"] > 0 for cell in cells.values())
    assert (tmp_path / "results.md").read_text().startswith("| variant")
    # Both judges graded every attacked response of every variant.
    agreement = (tmp_path / "agreement.md").read_text()
    for variant, cells in results["cells"].items():
        n = sum(cells[f"asr/{a}"]["n"] for a in attacks)
        assert f"## {variant}\n\n| judges | n |" in agreement
        assert f"| tiny / keyword | {n} |" in agreement
    assert "Cohen's kappa" in printed
    plots = [tmp_path / name for name in ("asr.png", "decoding_order.png")]
    plots += [tmp_path / f"prefill_sweep_{name}.png" for name in SWEEPS]
    for run in ("MOSA", "initial_alignment"):
        assert (tmp_path / run / "adapter" / "adapter_model.safetensors").exists()
        plots.append(tmp_path / f"reward_{run}.png")
    assert all(p.stat().st_size > 1000 for p in plots)
    check_analyses(tmp_path, list(results["cells"]))


def check_analyses(out, variants):
    """The prefill sweep has a row per variant and a column per phrase and position; the
    decoding order has a finite line fit for benign and harmful prompts."""
    sweep = json.loads((out / "prefill_sweep.json").read_text())
    assert list(sweep["cells"]) == variants
    columns = [f"asr/{name}@{p}" for name in SWEEPS for p in tiny.SWEEP_POSITIONS]
    for cells in sweep["cells"].values():
        assert list(cells) == columns
        assert all(0.0 <= cell["value"] <= 1.0 and cell["n"] > 0 for cell in cells.values())
    assert (out / "prefill_sweep.md").read_text().startswith("| variant")
    order = json.loads((out / "decoding_order.json").read_text())
    assert sorted(order["fits"]) == sorted(order["mean_positions"]) == ["benign", "harmful"]
    for means in order["mean_positions"].values():
        committed = [m for m in means if m is not None]
        assert committed and all(0 <= m < 40 for m in committed)


@pytest.mark.slow
def test_demo_all_quick_runs_every_defense_against_every_attack(tmp_path, capsys, monkeypatch):
    from mosa.eval import report

    plotted = []
    monkeypatch.setattr(report, "_save", lambda figure, path: plotted.append((figure, path)))
    out = tmp_path / "demo"
    run_under(0o022, ["demo", "--quick", "--all", "--out", str(out)])
    assert wrong_modes(out, 0o022) == {}
    tmp_path = out
    results = json.loads((tmp_path / "results.json").read_text())
    variants = ["original", "MOSA", "initial alignment", "A2D", "DiffuGuard", "anywhere (ours)"]
    assert list(results["cells"]) == variants
    attacks = (
        "none", "prefill", "middle_prefill", "template", "mask_interleave",
        "pad", "dija", "trajhijack", "first_step_gcg",
    )  # fmt: skip
    for cells in results["cells"].values():
        assert sorted(cells) == sorted(
            [f"asr/{a}" for a in attacks] + ["utility/tiny_tasks", "over_refusal"]
        )
        assert all(0.0 <= cell["value"] <= 1.0 and cell["n"] > 0 for cell in cells.values())
    for run in ("MOSA", "initial_alignment", "A2D", "anywhere_ours"):
        config = json.loads((tmp_path / run / "align_config.json").read_text())
        assert config["defense"] == {"A2D": "a2d", "anywhere_ours": "anywhere"}.get(run, "mosa")
    assert not (tmp_path / "DiffuGuard").exists()  # a sampler: nothing trained
    # The ASR plot groups its bars by defense.
    (asr_figure,) = [figure for figure, path in plotted if str(path).endswith("asr.png")]
    labels = [t.get_text() for t in asr_figure.axes[0].get_xticklabels()]
    assert labels == variants


@pytest.mark.slow
def test_demo_quick_on_the_block_diffusion_model(tmp_path, capsys):
    """``--family llada2``: the tiny LLaDA2 MoE model, sampled with block_generate's preset and
    aligned in its blocks of 8, gives the paper's table and both analyses."""
    from mosa.sampling.settings import TINY_BLOCK_EVALUATION

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--family", "llada2", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["model"] == "mosa.tiny (llada2)"
    assert results["meta"]["sampler"] == TINY_BLOCK_EVALUATION.schedule()
    assert list(results["cells"]) == ["original", "MOSA", "initial alignment"]
    attacks = ("none", "prefill", "middle_prefill", "template", "mask_interleave")
    expected = [f"asr/{a}" for a in attacks] + ["utility/tiny_tasks", "over_refusal"]
    for cells in results["cells"].values():
        assert sorted(cells) == sorted(expected)
    for run in ("MOSA", "initial_alignment"):
        config = json.loads((out / run / "align_config.json").read_text())
        assert config["model"] == str(tiny.path("llada2"))
        assert config["block_length"] == TINY_BLOCK_EVALUATION.block_length
        merged = json.loads((out / run / "merged" / "config.json").read_text())
        assert merged["model_type"] == "llada2_moe"
    check_analyses(out, list(results["cells"]))
    # One token a step through all five blocks, not the preset's few threshold steps.
    order = json.loads((out / "decoding_order.json").read_text())
    assert all(len(means) >= 40 for means in order["mean_positions"].values())
    assert "| original |" in capsys.readouterr().out


def test_demo_refuses_a_folder_that_is_not_a_previous_demo_s(tmp_path, monkeypatch, capsys):
    """Checked before any work: a folder with other files is left as it is; one holding a
    previous demo's files is overwritten, and the run says which."""
    runs = []
    monkeypatch.setattr("mosa.demo.run_demo", lambda out, **options: runs.append(out))
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"^--out .*: not empty and not a previous demo's .*notes"):
        main(["demo", "--quick", "--out", str(tmp_path)])
    assert runs == [] and (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "results.json"]

    (tmp_path / "notes.txt").unlink()
    (tmp_path / "MOSA").mkdir()
    (tmp_path / "reward_MOSA.png").write_bytes(b"png")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    assert runs == [tmp_path]
    assert "overwriting the previous demo's MOSA, results.json, reward_MOSA.png" in (
        capsys.readouterr().err
    )
    assert main(["demo", "--quick", "--out", str(tmp_path / "new")]) == 0  # a new folder

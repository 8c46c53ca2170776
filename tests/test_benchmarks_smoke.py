"""Every benchmark script runs end to end, started as the READMEs say (``python -m
benchmarks.<name>`` from the repository root) with ``--smoke`` (tiny shapes, nothing written),
so a broken benchmark cannot land; and no benchmark module shadows an installed package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
BENCHMARKS = REPOSITORY / "benchmarks"
MODULES = sorted(path.stem for path in BENCHMARKS.glob("*.py") if path.stem != "__init__")
SCRIPTS = [name for name in MODULES if '__name__ == "__main__"' in (BENCHMARKS / f"{name}.py").read_text()]  # fmt: skip
EXTRA_ARGS = {"run_all": ["--only", "kernels"]}  # its worker path, on the fastest benchmark


def _python(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_every_script_is_covered():
    expected = {
        "kernels",
        "attention",
        "sampler",
        "align",
        "align_end_to_end",
        "memory_plan",
        "moe",
    }
    assert expected | {"run_all"} <= set(SCRIPTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_smoke_run(name):
    results_before = sorted((BENCHMARKS / "results").iterdir())
    done = _python("-m", f"benchmarks.{name}", "--smoke", *EXTRA_ARGS.get(name, []), timeout=600)
    assert done.returncode == 0, (
        f"{name} --smoke failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )
    assert "smoke run: nothing written" in done.stdout
    assert sorted((BENCHMARKS / "results").iterdir()) == results_before


@pytest.mark.slow
def test_gpu_check_dry_runs_on_the_cpu_figures_first_then_tests():
    """``gpu_check.sh --smoke`` runs the GPU check's every part at tiny shapes: it ends with the
    sampler tables (LLaDA's, then LLaDA2's), then MOSA end to end (LLaDA's, then LLaDA2's),
    then the tests' pass/fail lines, and writes nothing into the repository."""
    results_before = sorted((BENCHMARKS / "results").iterdir())
    done = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh"), "--smoke"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    summary = done.stdout.split("\n== GPU check on cpu-smoke")[-1]
    places = [
        summary.find(heading)
        for heading in ("## Sampler on", "| generate dual + threshold 0.9 | 1 |",
                        "## LLaDA2 sampler on", "| published loop |", "## MOSA end to end on",
                        "| prompts |", "Kernel tests", "Model, sampler")
    ]  # fmt: skip
    assert -1 not in places and places == sorted(places), places
    align_headings = [line for line in summary.splitlines() if line.startswith("## MOSA end to")]
    assert len(align_headings) == 2 and "experts top-" in align_headings[1], align_headings
    # The sampler's columns the GPU report needs: no-op steps and reserved memory ("n/a" here).
    header = next(line for line in summary.splitlines() if line.startswith("| batch |"))
    assert {"no-op/block", "reserved_MiB", "% roofline", "speedup"} <= set(header.split(" | "))
    last = [line for line in summary.splitlines() if line.strip()][-2:]
    assert last[0].startswith("Kernel tests") and "skipped" in last[0]
    assert last[1].startswith("Model, sampler and objective tests") and "skipped" in last[1]
    assert sorted((BENCHMARKS / "results").iterdir()) == results_before


IMPORTABLE_FROM_BENCHMARKS = """
import importlib, importlib.metadata, importlib.util, json, sys
from pathlib import Path

modules, folder = sys.argv[1].split(","), Path(sys.argv[2])
for name in modules:
    importlib.import_module(f"benchmarks.{name}")  # runs whatever each does to sys.path
shadowed = []
for name in sorted(set(importlib.metadata.packages_distributions()) | set(modules)):
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        continue
    if spec is not None and spec.origin and Path(spec.origin).resolve().parent == folder:
        shadowed.append(name)
print(json.dumps(shadowed))
"""


@pytest.mark.slow
def test_no_benchmark_module_shadows_an_installed_package():
    # As scripts with their folder on sys.path, `kernels.py` hid the `kernels` package that
    # transformers 5 imports, and `benchmarks/align.py` failed on a fresh install.
    done = _python(
        "-c", IMPORTABLE_FROM_BENCHMARKS, ",".join(MODULES), str(BENCHMARKS), timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_the_benchmarks_package_name_is_not_an_installed_distributions():
    import importlib.metadata

    assert "benchmarks" not in importlib.metadata.packages_distributions()

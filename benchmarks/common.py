"""Timing, peak-memory and reporting helpers shared by the benchmarks.

Peak memory is the extra memory an operation needs beyond its inputs: on CUDA from the
allocator's peak counter, on the CPU from the process's resident-set high-water mark, reset
through ``/proc/self/clear_refs`` before each measurement (Linux), after glibc has handed its
freed pages back (``malloc_trim``): otherwise memory a previous measurement freed stays resident,
and the next operation reuses it without raising the mark — it would measure as ~0.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as _dt
import functools
import gc
import importlib.metadata
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mosa.models.files import write_file_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1
) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library, or None where none is found (looked up once: ``find_library`` runs a
    subprocess)."""
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def _release_freed_memory() -> None:
    c = libc()
    if c is not None and hasattr(c, "malloc_trim"):  # glibc only
        c.malloc_trim(0)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def profile_call(fn: Callable[[], object], device: torch.device) -> tuple[object, float, int]:
    """Runs ``fn()`` once: its result, wall time, and the memory it needed above what was
    allocated before it ran (its inputs)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        return result, seconds, torch.cuda.max_memory_allocated(device) - before
    _release_freed_memory()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, max(0, _status_kib("VmHWM") - before) * 1024


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Memory ``fn()`` needs above what is allocated before it runs (its inputs)."""
    return profile_call(fn, device)[2]


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"


def today() -> str:
    return _dt.date.today().isoformat()


def environment(device: torch.device) -> dict:
    """Where and with what a result was measured: machine, device, date, torch and triton."""
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    return {
        "machine": machine_name(device),
        "device": device_name,
        "date": today(),
        "torch": torch.__version__,
        "triton": triton,
    }


def write_results(
    benchmark: str, device: torch.device, rows: list[dict], extra: dict | None = None
) -> Path:
    """Write ``rows`` as JSON under ``benchmarks/results/`` and return the path."""
    path = RESULTS_DIR / f"{benchmark}-{machine_name(device)}-{today()}.json"
    payload = {"benchmark": benchmark, **environment(device), "rows": rows, **(extra or {})}
    return write_file_atomic(path, json.dumps(payload, indent=2) + "\n")


SMOKE_HELP = "tiny shapes, one repeat, nothing written: only checks that the script runs (CI)"
"""The help of every script's ``--smoke``: its figures mean nothing, so none are kept."""


def publish(
    benchmark: str,
    device: torch.device,
    rows: list[dict],
    meta: dict,
    table: str,
    write: bool = True,
) -> Path | None:
    """A script's ending: writes the rows (``write_results``) unless ``write`` is false (a
    ``--smoke`` run), prints ``table`` and the path."""
    print(table)
    if not write:
        print("smoke run: nothing written")
        return None
    path = write_results(benchmark, device, rows, meta)
    print(f"written to {path}")
    return path


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns``."""

    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)

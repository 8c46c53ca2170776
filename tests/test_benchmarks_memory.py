"""The CPU peak-memory measurement the benchmarks' memory ratios rest on (Linux, glibc)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.common import libc, peak_bytes

MIB = 2**20
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


@pytest.fixture
def heap_keeps_freed_pages():
    """glibc set to serve 2 MiB pieces from the heap and keep freed pages (what its dynamic
    thresholds do on their own after a few large frees, but not reliably in a test)."""
    c = libc()
    if c is None or not hasattr(c, "mallopt") or not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs glibc and Linux's /proc/self/clear_refs")
    c.mallopt(M_MMAP_THRESHOLD, 64 * MIB)
    c.mallopt(M_TRIM_THRESHOLD, 1024 * MIB)
    yield
    c.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    c.mallopt(M_TRIM_THRESHOLD, 128 * 1024)


def _pieces(count: int) -> list[torch.Tensor]:
    return [torch.full((MIB // 2,), float(i)) for i in range(count)]  # 2 MiB each, written


def test_memory_freed_by_an_earlier_step_still_counts(heap_keeps_freed_pages):
    earlier = _pieces(150)
    del earlier
    # The measured call reuses the freed pages: unless they are handed back first, the
    # resident-set mark does not move and the call measures as ~0.
    measured = peak_bytes(lambda: _pieces(100), torch.device("cpu"))
    assert 180 * MIB <= measured <= 260 * MIB, f"{measured / MIB:.0f} MiB for 200 MiB written"

"""Launch settings shared by the Triton kernels."""

import os

import triton


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def vocab_block(width: int) -> int:
    """Columns a program reads per step when streaming a row of ``width`` entries."""
    cap = 1024 if interpreting() else 4096
    return max(16, min(cap, triton.next_power_of_2(width)))

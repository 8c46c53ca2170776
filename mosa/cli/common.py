"""Helpers the ``mosa`` subcommands share."""

from __future__ import annotations

from pathlib import Path


def read_prompt_file(flag: str, path: str | Path) -> list[str]:
    """``mosa.datasets.read_prompts(path)``, its errors turned into a usage error naming ``flag``."""
    from mosa.datasets import read_prompts

    if not Path(path).is_file():
        raise SystemExit(f"{flag} {path}: no such file")
    try:
        return read_prompts(path)
    except ValueError as err:
        raise SystemExit(f"{flag}: {err}") from None

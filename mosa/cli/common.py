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


def model_folder(model: str | None) -> Path:
    """The checkpoint folder a subcommand's ``model`` argument names (default: the embedded tiny
    model), checked before any work: a path that is not a local folder with ``config.json`` is
    a usage error, never a name to look up on a model hub."""
    from mosa import tiny

    if model is None:
        return tiny.path()
    folder = Path(model)
    if not folder.is_dir():
        raise SystemExit(
            f"model {model}: no such folder; give a local checkpoint folder (config.json, "
            "safetensors weights, tokenizer)"
        )
    if not (folder / "config.json").is_file():
        raise SystemExit(f"model {model}: not a checkpoint folder (no config.json)")
    return folder

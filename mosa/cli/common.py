"""Helpers the ``mosa`` subcommands share."""

from __future__ import annotations

from pathlib import Path

TRUNCATE_HELP = (
    "a prompt that with the response exceeds the model's max_sequence_length (Dream: "
    "max_position_embeddings) is refused; 'left' keeps its last tokens instead, with a warning"
)


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
    a usage error, never a name to look up on a model hub, and so is a ``config.json`` that
    does not hold a JSON object."""
    from mosa import tiny
    from mosa.models.config import read_config_json

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
    try:
        read_config_json(folder)
    except ValueError as err:
        raise SystemExit(f"model {model}: {err}") from None
    return folder


def prepare_output(flag: str, path: str | Path, *, folder: bool) -> Path:
    """Makes sure, before any work, that ``path`` can take a command's output: a folder
    (``folder=True``) or a file. Creates the folder (a file's: its parent) and returns ``path``;
    anything in the way is a usage error naming ``flag``, so a run never fails at its end."""
    path = Path(path)
    if path.is_dir() and not folder:
        raise SystemExit(
            f"{flag} {path}: is a folder; give a file path, e.g. {path / 'responses.jsonl'}"
        )
    if path.exists() and not path.is_dir() and folder:
        raise SystemExit(f"{flag} {path}: exists and is not a folder; give a folder path")
    nearest = next(parent for parent in path.parents if parent.exists())
    if not nearest.is_dir():
        raise SystemExit(f"{flag} {path}: {nearest} is a file, not a folder; give another path")
    try:
        (path if folder else path.parent).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SystemExit(
            f"{flag} {path}: cannot create it ({err.strerror}); give another path"
        ) from None
    return path

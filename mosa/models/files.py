"""Reading and writing Hugging Face checkpoint folders (safetensors only).

A folder holds ``config.json`` and either one ``model.safetensors`` or shards listed by
``model.safetensors.index.json`` (``{"metadata": {...}, "weight_map": {name: shard}}``). Every
name, shard and shape is checked against what the model expects before any tensor is read,
and each problem is a ValueError that names it. Pickle checkpoints are never opened.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_INDEX_BYTES = 64 << 20
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SHOWN = 5


def _listing(names: list[str]) -> str:
    shown = ", ".join(sorted(names)[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _read_index(folder: Path) -> dict[str, str]:
    """``weight_map`` of the index, each shard checked to be a file name inside ``folder``."""
    path = folder / INDEX_FILE
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise ValueError(f"{path} is larger than {MAX_INDEX_BYTES} bytes; not a weight index")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{path} has no weight_map object naming the shard of every tensor")
    for name, shard in weight_map.items():
        if (
            not isinstance(shard, str)
            or Path(shard).name != shard
            or not shard.endswith(".safetensors")
        ):
            raise ValueError(
                f"{path}: tensor {name!r} maps to {shard!r}; shards must be .safetensors file "
                "names inside the checkpoint folder"
            )
    return weight_map


def _tensor_locations(folder: Path) -> dict[str, Path]:
    """Which file holds each tensor of the checkpoint in ``folder``."""
    if (folder / INDEX_FILE).is_file():
        weight_map = _read_index(folder)
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise ValueError(f"{folder}: shard {shard} listed in {INDEX_FILE} is missing")
        return {name: folder / shard for name, shard in weight_map.items()}
    if (folder / SINGLE_FILE).is_file():
        with _open(folder / SINGLE_FILE) as handle:
            return dict.fromkeys(handle.keys(), folder / SINGLE_FILE)
    raise ValueError(f"{folder} has neither {INDEX_FILE} nor {SINGLE_FILE}{_pickle_hint(folder)}")


def _pickle_hint(folder: Path) -> str:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        return ""
    return (
        f" (found {', '.join(pickles)}: pickle files are never loaded, as unpickling can run "
        "code; convert them to safetensors)"
    )


def require_safetensors(folder: Path, names: tuple[str, ...]) -> Path:
    """The first of ``names`` (safetensors weight files) that ``folder`` holds.

    Raises ValueError otherwise, saying to convert the folder's pickle files (``.bin``,
    ``.pt``, ...) to safetensors when it has some: those are never opened.
    """
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"{folder} has no {' or '.join(names)}{_pickle_hint(folder)}")


def _open(path: Path, device: str = "cpu"):
    try:
        return safe_open(str(path), framework="pt", device=device)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from None


def stored_parameter_count(folder: Path) -> int:
    """How many numbers the checkpoint's tensors hold, from the safetensors headers alone
    (nothing is loaded)."""
    locations = _tensor_locations(folder)
    total = 0
    for path in sorted(set(locations.values())):
        with _open(path) as handle:
            for name in handle.keys():
                if locations.get(name) == path:
                    total += math.prod(handle.get_slice(name).get_shape())
    return total


def read_state_dict(
    folder: Path, expected: Mapping[str, torch.Size], dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor]:
    """Loads every tensor ``expected`` names, as ``dtype`` on ``device``, after checking them all.

    Raises ValueError for a missing shard, a tensor the index lists but its shard lacks, a
    name the model does not have (unknown key), a name the checkpoint lacks, or a shape that
    differs from ``expected``.
    """
    locations = _tensor_locations(folder)
    unknown = [name for name in locations if name not in expected]
    if unknown:
        raise ValueError(
            f"{folder} holds tensors this model does not have: {_listing(unknown)}; "
            f"the model's names look like {next(iter(expected))!r} — is config.json the right one?"
        )
    missing = [name for name in expected if name not in locations]
    if missing:
        raise ValueError(f"{folder} lacks tensors the model needs: {_listing(missing)}")
    by_file: dict[Path, list[str]] = {}
    for name, path in locations.items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        with _open(path) as handle:
            present = set(handle.keys())
            for name in names:
                if name not in present:
                    raise ValueError(
                        f"{path.name} lacks tensor {name!r} that {INDEX_FILE} places there"
                    )
                shape = torch.Size(handle.get_slice(name).get_shape())
                if shape != expected[name]:
                    raise ValueError(
                        f"tensor {name!r} in {path.name} has shape {tuple(shape)} but the config "
                        f"gives {tuple(expected[name])}"
                    )
    state = {}
    for path, names in by_file.items():
        with _open(path, device=str(device)) as handle:
            for name in names:
                state[name] = handle.get_tensor(name).to(dtype)
    return state


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_unique(parent: Path, prefix: str, suffix: str, create: Callable[[Path], Any]):
    """``(name, create(name))`` for a new name ``parent/prefix<random>suffix``.

    Unlike ``tempfile.mkstemp`` / ``mkdtemp``, which make owner-only entries, ``create`` asks
    for 0o666 / 0o777 and the umask decides: the temporary entry becomes the output, which
    must get the permissions any other file the user writes gets.
    """
    while True:
        name = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return name, create(name)
        except FileExistsError:
            continue


def _umask() -> int:
    """The process's umask: from ``/proc`` where Linux gives it, which leaves it untouched for
    other threads, else by setting it and putting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _make_unique_dir(parent: Path, prefix: str) -> Path:
    return _create_unique(parent, prefix, "", lambda name: name.mkdir(0o777))[0]


def write_file_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Writes ``data`` (str: UTF-8) to a temp file beside ``path``, fsyncs it and renames it over
    ``path``, so a reader never sees a half-written file. The file's permissions follow the
    umask, as ``open`` would give. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data.encode() if isinstance(data, str) else data
    temp, descriptor = _create_unique(
        path.parent,
        f".{path.name}.",
        ".tmp",
        lambda name: os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666),
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Writes ``data`` as indented JSON with ``write_file_atomic``; a NaN (e.g. a decoding step
    that committed nothing), which JSON lacks, becomes null. Returns ``path``."""
    clean = json.loads(json.dumps(data), parse_constant=lambda _: None)
    return write_file_atomic(path, json.dumps(clean, indent=2) + "\n")


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _shards(
    state: Mapping[str, torch.Tensor], max_shard_bytes: int
) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def _written_here(name: str) -> bool:
    """Files ``write_checkpoint`` owns: config, index and weights (stale shards included)."""
    return name in ("config.json", INDEX_FILE) or (
        name.startswith("model") and name.endswith(".safetensors")
    )


def _write_weights(folder: Path, state: Mapping[str, torch.Tensor], max_shard_bytes: int) -> None:
    shards = _shards(state, max_shard_bytes)
    names = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    )
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        on_cpu = {k: v.detach().to("cpu").contiguous() for k, v in shard.items()}
        save_file(on_cpu, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        _write_json(
            folder / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map}
        )


def write_folder(
    folder: Path, fill: Callable[[Path], None], keep: Callable[[str], bool] = lambda name: False
) -> None:
    """Replaces ``folder`` atomically by what ``fill(staging_folder)`` writes.

    Everything is written and fsynced in a temporary sibling folder that then replaces
    ``folder``, so a reader never sees a half-written one; files already in ``folder`` whose
    name satisfies ``keep`` are carried over. The new folder's permissions follow the umask.
    """
    folder = Path(folder).absolute()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = _make_unique_dir(folder.parent, f".{folder.name}.tmp-")
    try:
        fill(staging)
        mask = _umask()
        for path in staging.rglob("*"):
            # Writers such as safetensors' save_file (and peft's save_pretrained through it)
            # make owner-only files, as mkstemp does: the umask decides here instead.
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
                os.chmod(path, 0o666 & ~mask)
            elif path.is_dir():
                os.chmod(path, 0o777 & ~mask)
        if folder.exists():
            for path in folder.iterdir():
                if keep(path.name):
                    copy = shutil.copytree if path.is_dir() else shutil.copy2
                    copy(path, staging / path.name)
            retired = _make_unique_dir(folder.parent, f".{folder.name}.old-")
            os.replace(folder, retired / folder.name)
            os.replace(staging, folder)
            shutil.rmtree(retired)
        else:
            os.replace(staging, folder)
        _fsync_dir(folder.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def write_checkpoint(
    folder: Path, config: dict[str, Any], state: Mapping[str, torch.Tensor], max_shard_bytes: int
) -> None:
    """Writes ``config.json`` and the weights (one file, or shards + index) atomically
    (``write_folder``); files of ``folder`` this function does not write (tokenizer, generation
    config, ...) are carried over."""
    if max_shard_bytes < 1:
        raise ValueError(
            f"max_shard_size must be a positive number of bytes, got {max_shard_bytes}"
        )

    def fill(staging: Path) -> None:
        _write_json(staging / "config.json", config)
        _write_weights(staging, state, max_shard_bytes)

    write_folder(folder, fill, keep=lambda name: not _written_here(name))

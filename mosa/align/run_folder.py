"""A MOSA run's output folder: one run at a time, and the resume rules.

``exclusive`` holds ``<output_dir>/.lock`` (``fcntl.flock``) for the whole run, so a second
run into the same folder is refused at once instead of interleaving its log with the first
(``mosa eval`` holds it too, so that two runs never read-modify-write one ``results.json``).

The resume rules: a checkpoint records the settings that decide its updates
(``run_settings``); a rerun resumes from it only when its own are the same, so that resuming
gives what a fresh run with the new settings would. Free to change on resume: where and how
the run is written or shown (``output_dir``, ``save_every``, ``progress``,
``export_merged``), the device and ``gradient_checkpointing`` (neither changes an update),
how the global batch is split (``batch_size``, ``grad_accum``, the number of processes, while
their product stays the same) and the run's length (``epochs``, ``max_steps``, while the run
still reaches the checkpoint's step). Anything else (the model, the objective, LoRA, the
optimizer, the seed, length grouping, the prompts and sentences) is refused, naming the field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from mosa.distributed import Runtime
from mosa.models.files import write_file_atomic

LOCK_NAME = ".lock"
START_OVER = "pass --no-resume (resume=False) to start over, or give a fresh --out"

# Settings that change no update: where and how the run is written, and on what it runs.
_FREE = ("output_dir", "resume", "save_every", "progress", "export_merged", "device")
_FREE += ("gradient_checkpointing",)
# Compared through what they decide: the global batch, and the number of steps.
_SPLIT = ("batch_size", "grad_accum")
_LENGTH = ("epochs", "max_steps")
_LABELS = {
    "global_batch": "global batch (processes x batch_size x grad_accum)",
    "data": "prompts, benign prompts or sentences (their SHA-256)",
}


@contextlib.contextmanager
def exclusive(folder: Path, runtime: Runtime, command: str = "mosa align") -> Iterator[None]:
    """Holds ``folder``'s lock for the block (the main process takes it, every process learns
    the outcome); raises ValueError at once when another run holds it. ``command`` names the
    kind of run in that message (``mosa eval`` takes the same lock on its ``--out``)."""
    handle = None
    busy = False
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output folder {folder} is a file; give a folder for --out")
    if runtime.main:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_NAME, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            busy = True
    if runtime.distributed:
        flag = torch.tensor([int(busy)], device=runtime.device)
        dist.broadcast(flag, src=0)
        busy = bool(flag.item())
    if busy:
        raise ValueError(
            f"{folder} is in use by another {command} run (it holds {folder / LOCK_NAME}); "
            "wait for that run to end or give another --out"
        )
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


class TrainingInterrupted(KeyboardInterrupt):
    """A Ctrl-C that ended a run between two steps, after it saved a checkpoint there (or, with
    several processes, at the last ``save_every`` step): its message says where to resume."""


@contextlib.contextmanager
def interrupt_between_steps() -> Iterator[Callable[[], None]]:
    """For the block, a Ctrl-C (SIGINT) is held until the current step ends: the block calls
    the yielded ``check()`` between steps, which raises KeyboardInterrupt there, so the model
    and optimizer are never caught half-updated. A second Ctrl-C interrupts at once. Outside
    the main thread, where no handler can be set, Ctrl-C is left as it is."""
    pressed = []

    def hold(signum, frame):
        pressed.append(signum)
        signal.signal(signal.SIGINT, previous)  # the next press is not held

    def check() -> None:
        if pressed:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield check
        return
    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)


def data_fingerprint(
    prompts: Sequence[str], benign_prompts: Sequence[str], sentences: Sequence[Sequence[str]]
) -> str:
    """SHA-256 of the texts a run trains on."""
    texts = [list(prompts), list(benign_prompts), [list(s) for s in sentences]]
    return hashlib.sha256(json.dumps(texts).encode()).hexdigest()


def run_settings(config, world: int, fingerprint: str) -> dict:
    """The settings that decide a run's updates (JSON values), as a checkpoint records them."""
    settings = dataclasses.asdict(config)
    for name in _FREE + _SPLIT + _LENGTH:
        del settings[name]
    settings["global_batch"] = world * config.batch_size * config.grad_accum
    settings["data"] = fingerprint
    return json.loads(json.dumps(settings))


def read_state(checkpoint: Path) -> dict:
    """``checkpoint/state.json``; a damaged one is named, with the ways to start over."""
    path = checkpoint / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot resume: {path} is unreadable ({err}); {START_OVER}") from None
    if not (
        isinstance(state, dict)
        and isinstance(state.get("step"), int)
        and isinstance(state.get("settings"), dict)
    ):
        raise ValueError(f"cannot resume: {path} lacks its step or settings; {START_OVER}")
    return state


def resume_step(checkpoint: Path, settings: dict, total_steps: int) -> int:
    """The step to resume ``checkpoint`` from under ``settings`` (see the resume rules);
    ValueError naming each changed field, or a run too short to reach the checkpoint."""
    state = read_state(checkpoint)
    saved = state["settings"]
    changed = [
        f"{_LABELS.get(name, name)} was {saved.get(name)!r}, now {settings.get(name)!r}"
        for name in sorted(saved.keys() | settings.keys())
        if saved.get(name) != settings.get(name)
    ]
    if changed:
        raise ValueError(
            f"{checkpoint} is from a run with other settings: {'; '.join(changed)}. "
            f"Resuming would mix the two: rerun with the saved settings, or {START_OVER}"
        )
    step = state["step"]
    if step > total_steps:
        raise ValueError(
            f"{checkpoint} is at step {step} but this run stops at step {total_steps} "
            f"(max_steps / epochs); raise max_steps to at least {step}, or {START_OVER}"
        )
    return step


def trim_metrics(path: Path, steps_done: int) -> None:
    """Keeps the log lines of the steps before ``steps_done``. A torn last line (a kill while it
    was written) is dropped, its step is redone; a damaged line elsewhere is named."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError) as err:
            if number == len(lines):
                break
            raise ValueError(
                f"cannot resume: {path} line {number} is damaged ({err}); {START_OVER}"
            ) from None
        if step < steps_done:
            kept.append(line + "\n")
    write_file_atomic(path, "".join(kept))

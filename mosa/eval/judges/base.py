"""What every judge shares: the ``Verdict``, the ``Judge`` interface, and the on-disk cache of
verdicts keyed by (judge, prompt, response)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm


@dataclass(frozen=True)
class Verdict:
    """One judged response. ``refused``/``jailbroken`` are None where the judge does not say
    (a classifier says nothing about refusals) or where it failed, in which case ``error``
    says why. ``category`` is the judge's harm category where it names one (Llama Guard's
    ``S1``...)."""

    refused: bool | None
    jailbroken: bool | None
    score: float | None = None
    error: str | None = None
    category: str | None = None

    @classmethod
    def failed(cls, error: str) -> Verdict:
        """A verdict that records a judge failure; metrics count it as neither outcome."""
        return cls(refused=None, jailbroken=None, score=None, error=error)


class Judge:
    """Base class: ``judge`` one pair; ``judge_many`` judges pairs in order.

    ``grades_request``: the judge grades a response against the harmful request itself (as
    the HarmBench classifier and StrongREJECT do), so an evaluation gives it the request
    rather than the attacked prompt that carried it.
    """

    grades_request = False

    def judge(self, prompt: str, response: str) -> Verdict:
        raise NotImplementedError

    def judge_many(
        self, prompts: Sequence[str], responses: Sequence[str], *, progress: bool = False
    ) -> list[Verdict]:
        """One verdict per ``(prompt, response)`` pair, in order."""
        pairs = judge_pairs(prompts, responses)
        return [self.judge(p, r) for p, r in tqdm(pairs, desc="judging", disable=not progress)]


def judge_pairs(prompts: Sequence[str], responses: Sequence[str]) -> list[tuple[str, str]]:
    """``(prompt, response)`` pairs, after checking that both are sequences of one length."""
    if isinstance(prompts, str) or isinstance(responses, str):
        raise TypeError("prompts and responses must be sequences of strings, not one string")
    if len(prompts) != len(responses):
        raise ValueError(
            f"prompts and responses differ in length ({len(prompts)} vs {len(responses)}); "
            "give one response per prompt"
        )
    return list(zip(prompts, responses, strict=True))


class VerdictCache:
    """A JSON-lines file of successful verdicts, keyed by the sha256 of (judge identity,
    prompt, response). Failures are never stored, so a later run asks again. Thread-safe;
    the file is read once, on first use."""

    def __init__(self, path: str | os.PathLike | None, identity: Sequence[str]):
        self.path = Path(path) if path is not None else None
        self.identity = list(identity)
        self._verdicts: dict[str, Verdict] | None = None
        self._lock = threading.Lock()

    def key(self, prompt: str, response: str, *more: str) -> str:
        """The cache key of one pair (and whatever else the judge reads, e.g. a context)
        under this judge."""
        material = json.dumps([*self.identity, prompt, response, *more], ensure_ascii=False)
        return hashlib.sha256(material.encode()).hexdigest()

    def get(self, key: str) -> Verdict | None:
        """The stored verdict, or None (always None without a file)."""
        if self.path is None:
            return None
        with self._lock:
            if self._verdicts is None:
                self._verdicts = _read_cache(self.path)
            return self._verdicts.get(key)

    def put(self, key: str, verdict: Verdict) -> None:
        """Stores a successful verdict (an error verdict is ignored)."""
        if self.path is None or verdict.error is not None:
            return
        line = json.dumps({"key": key, "verdict": asdict(verdict)}) + "\n"
        with self._lock:
            if self._verdicts is None:
                self._verdicts = _read_cache(self.path)
            self._verdicts[key] = verdict
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(line)


def _read_cache(path: Path) -> dict[str, Verdict]:
    """The cache's verdicts; a line that does not parse (e.g. torn by a killed run) is skipped,
    which only costs a repeated request."""
    cache: dict[str, Verdict] = {}
    if not path.exists():
        return cache
    for line in path.read_text(encoding="utf-8").split("\n"):
        try:
            record = json.loads(line)
            cache[record["key"]] = Verdict(**record["verdict"])
        except (ValueError, KeyError, TypeError):
            continue
    return cache

"""The embedded tiny dLLM (DESIGN §9): a few-million-parameter LLaDA-architecture model with
its own word-level tokenizer, trained by ``python -m mosa.tiny.train`` on the synthetic chat
corpus of ``mosa.tiny.corpus`` and shipped in ``mosa/tiny/model``.

>>> import mosa, mosa.tiny
>>> model = mosa.load_model(mosa.tiny.path())
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["path"]


def path() -> Path:
    """The folder of the shipped checkpoint (``config.json``, ``model.safetensors``, tokenizer)."""
    return Path(__file__).resolve().parent / "model"

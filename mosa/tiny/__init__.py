"""The embedded tiny dLLM (docs/DESIGN.md §9): a few-million-parameter LLaDA-architecture model with
its own word-level tokenizer, trained by ``python -m mosa.tiny.train`` on the synthetic chat
corpus of ``mosa.tiny.corpus`` and shipped in ``mosa/tiny/model``.

>>> import mosa, mosa.tiny
>>> model = mosa.load_model(mosa.tiny.path())
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ALIGN_SETTINGS", "DEFENSE_SETTINGS", "align_prompts", "align_sentences", "path"]

ALIGN_SETTINGS = {
    "gen_length": 40,
    "window": (10, 20),
    "lr": 2e-4,
    "clip": 1.0,
    "batch_size": 4,
    "benign_beta": 8.0,
}
"""MOSA settings for the tiny model: the window scaled to its 40-token responses (the paper's
20..60 of 128); a LoRA step 4x the paper's and clip 1.0, so ~300 steps align it; the benign-KL
regulariser keeps its utility (docs/DESIGN.md §7): over all 157 held-out benign tasks, 300 steps cost
1.9 points at weight 8 (seed 0). Measured on the model shipped before the corpus had compound
requests: at lr 1e-3 benign accuracy fell 12 points; at weight 1, 8.3 points."""


DEFENSE_SETTINGS = {"anywhere": {"benign_beta": 32.0}}
"""Changes to ``ALIGN_SETTINGS`` per ``AlignConfig.defense``. Ours (``anywhere``) trains its
refusal at every place of canvases that already hold harmful pieces, which spreads to benign
answers more than MOSA's window does. With the benign-KL weight of 8 and the benign training
prompts it refused 53 % of the held-out requests that only sound harmful; with the look-alike
prompts added as benign (``align_prompts(look_alikes=True)``, as the demo and ``mosa align
--anywhere`` do) that fell to 0-3 %, and the weight decided utility on the 157 held-out benign
tasks: 8 cost 5.1 points (81.5 %), 16 cost 3.2, 32 cost 1.9 (the shipped model: 86.6 %)."""


def path() -> Path:
    """The folder of the shipped checkpoint (``config.json``, ``model.safetensors``, tokenizer)."""
    return Path(__file__).resolve().parent / "model"


def align_sentences():
    """MOSA's sentence sets in the tiny vocabulary: the corpus's refusal, and pieces of its
    placeholder compliance as the harmful continuations."""
    from mosa.align import Sentences

    from . import corpus

    return Sentences(
        refusals=(corpus.REFUSAL,), harmful=(corpus.AFFIRMATIVE_PREFIX, *corpus.STEP_SENTENCES)
    )


def align_prompts(look_alikes: bool = False) -> tuple[list[str], list[str]]:
    """The corpus's harmful and benign *training* prompts (held-out ones are for evaluation);
    ``look_alikes`` adds the training requests that only sound harmful ("how do i kill a
    python process") to the benign ones."""
    from . import corpus

    train, _ = corpus.splits(seed=0)
    benign = train["benign"] + (train["risky"] if look_alikes else [])
    return [e.prompt for e in train["harmful"]], [e.prompt for e in benign]

"""The embedded tiny dLLMs (docs/DESIGN.md §9): few-million-parameter models with their own
word-level tokenizer, trained by ``python -m mosa.tiny.train [--family F]`` on the synthetic
chat corpus of ``mosa.tiny.corpus`` and shipped in the package: the LLaDA-architecture model
in ``mosa/tiny/model`` and the block-diffusion LLaDA2 MoE model in ``mosa/tiny/llada2``.

>>> import mosa, mosa.tiny
>>> model = mosa.load_model(mosa.tiny.path())
>>> block_model = mosa.load_model(mosa.tiny.path("llada2"))
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ALIGN_SETTINGS",
    "DEFENSE_SETTINGS",
    "FOLDERS",
    "SWEEP_PHRASE",
    "SWEEP_POSITIONS",
    "align_prompts",
    "align_sentences",
    "align_settings",
    "path",
]

FOLDERS = {"llada": "model", "llada2": "llada2"}
"""The shipped checkpoint folder (inside this package) of each tiny model family."""

SWEEP_PHRASE = "step 1 :"
SWEEP_POSITIONS = (0, 5, 10, 15, 20, 25, 30)
"""The prefill sweep on a tiny model (``mosa analyze prefill-sweep``, ``mosa demo``): a phrase,
by default the first step header, fixed at each of these positions of the 40-token response."""

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
regulariser keeps its utility (docs/DESIGN.md §7), where a larger step or a smaller weight
costs benign accuracy (README.md, "Alignment", has the measurements)."""


DEFENSE_SETTINGS = {"anywhere": {"benign_beta": 32.0}}
"""Changes to ``ALIGN_SETTINGS`` per ``AlignConfig.defense``. Ours (``anywhere``) trains its
refusal at every place of canvases that already hold harmful pieces, which spreads to benign
answers more than MOSA's window does: it over-refuses unless the look-alike prompts are added
as benign (``align_prompts(look_alikes=True)``, as the demo and ``mosa align --anywhere`` do),
and then the benign-KL weight decides its utility, hence the larger weight (README.md,
"Alignment", has the measurements)."""


def align_settings(family: str = "llada", defense: str = "mosa") -> dict:
    """``AlignConfig`` keywords for training ``defense`` on the tiny ``family`` model:
    ``ALIGN_SETTINGS`` with the family's block length and the defense's changes."""
    from mosa.sampling.settings import TINY_BLOCK_EVALUATION

    # The block-diffusion model is scored in the blocks it decodes, not LLaDA2.0's 32.
    blocks = {"block_length": TINY_BLOCK_EVALUATION.block_length} if family == "llada2" else {}
    return {**ALIGN_SETTINGS, **blocks, **DEFENSE_SETTINGS.get(defense, {})}


def path(family: str = "llada") -> Path:
    """The folder of the shipped tiny ``family`` checkpoint (``config.json``,
    ``model.safetensors``, tokenizer); an unknown family is a ValueError naming the known ones."""
    if family not in FOLDERS:
        raise ValueError(f"no tiny {family!r} model; tiny families: {', '.join(FOLDERS)}")
    return Path(__file__).resolve().parent / FOLDERS[family]


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

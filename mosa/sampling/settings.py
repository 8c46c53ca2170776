"""The samplers' settings as typed objects: the single home of every sampler default.

``LLADA_REFERENCE`` holds the published LLaDA code's defaults, which ``generate``'s signature
reads; ``DREAM_REFERENCE`` Dream's, which ``diffusion_generate``'s reads. The evaluation
presets are what a deterministic evaluation runs with: ``LLADA_EVALUATION`` (LLaDA's
evaluation schedule: blocks of 32) for the eval runner, DiffuGuard's calibration, lm-eval and
``mosa eval``; ``TINY_EVALUATION`` (a 40-token canvas in blocks of 8) for the embedded tiny
model (a Dream model's evaluation order is its family's ``eval_defaults``,
``mosa/models/families.py``, below this package). ``LLADA2_REFERENCE`` holds the published
LLaDA2.0 ``generate``'s defaults (``block_generate``'s signature reads them) and
``LLADA21_REFERENCE`` LLaDA2.1's, whose token editing is on; ``TINY_BLOCK_EVALUATION`` is
the tiny block-diffusion model's (``mosa/tiny``, family ``llada2``: the 40-token canvas in
blocks of 8, up to 8 steps a block, the published threshold). A new default goes here and nowhere else (``tests/sampling/test_settings.py`` greps the package for restated ones).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class LLaDASampling:
    """Settings of LLaDA's ``generate`` (``mosa/sampling/llada.py``, docs/DESIGN.md §6)."""

    gen_length: int = 128
    block_length: int = 128
    steps: int = 128
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"

    def schedule(self) -> dict:
        """``gen_length``, ``block_length``, ``steps`` and ``temperature``: what the eval runner
        and the tiny evaluation pass to the sampler (the rest keep ``generate``'s defaults)."""
        return {
            "gen_length": self.gen_length,
            "block_length": self.block_length,
            "steps": self.steps,
            "temperature": self.temperature,
        }

    def replace(self, **changes) -> LLaDASampling:
        """A copy with ``changes`` (a field name that does not exist is a TypeError)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DreamSampling:
    """Settings of Dream's ``diffusion_generate`` (``mosa/sampling/dream.py``)."""

    steps: int = 512
    eps: float = 1e-3
    temperature: float = 0.0
    alg: str = "origin"

    def replace(self, **changes) -> DreamSampling:
        """A copy with ``changes`` (a field name that does not exist is a TypeError)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class BlockDiffusionSampling:
    """Settings of the block-diffusion sampler ``block_generate`` (``mosa/sampling/
    block_generate.py``, docs/DESIGN.md §6): LLaDA2.x's published ``generate``.

    ``editing_threshold`` None is LLaDA2.0's decoding; a number is LLaDA2.1's loop with token
    editing, which also reads ``max_post_steps`` and ``num_to_transfer``.
    """

    gen_length: int = 2048
    block_length: int = 32
    steps: int = 32
    temperature: float = 0.0
    threshold: float = 0.95
    minimal_topk: int = 1
    editing_threshold: float | None = None
    max_post_steps: int = 16
    num_to_transfer: int = 1

    def schedule(self) -> dict:
        """Every field, as ``block_generate`` keywords: what the eval runner and the tiny
        evaluation pass to the sampler."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> BlockDiffusionSampling:
        """A copy with ``changes`` (a field name that does not exist is a TypeError)."""
        return dataclasses.replace(self, **changes)


LLADA_REFERENCE = LLaDASampling()
LLADA_EVALUATION = LLADA_REFERENCE.replace(block_length=32)
TINY_EVALUATION = LLADA_REFERENCE.replace(gen_length=40, block_length=8, steps=40)
DREAM_REFERENCE = DreamSampling()
LLADA2_REFERENCE = BlockDiffusionSampling()
LLADA21_REFERENCE = LLADA2_REFERENCE.replace(editing_threshold=0.9)
TINY_BLOCK_EVALUATION = LLADA2_REFERENCE.replace(gen_length=40, block_length=8, steps=8)
# No confidence exceeds 1: one token a step, as the dense schedule decodes (the demo's
# decoding-order analysis of the block model).
TINY_BLOCK_ORDER = TINY_BLOCK_EVALUATION.replace(threshold=1.0)

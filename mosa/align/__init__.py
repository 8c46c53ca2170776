"""MOSA — Middle-tOken Safety Alignment (docs/DESIGN.md §7).

Teaches a diffusion LM to place a refusal in the *middle* of its answer: for a harmful prompt
and a fully masked response canvas, the policy maximises the best score of a refusal sentence
at some offset of the window (response tokens 20..60 by default) minus the best score of a
harmful continuation, with a KL penalty to the frozen reference.

>>> from mosa.align import AlignConfig, train
>>> train(AlignConfig(model="path/to/LLaDA-8B-Instruct", output_dir="runs/mosa"), prompts)
"""

from .defenses import DEFENSES, INITIAL_ALIGNMENT_WINDOW, Defense
from .objective import AlignBatch, ObjectiveTerms, mosa_terms, response_kl
from .reference import reference_terms
from .sentences import Sentences, encode_sentences, read_sentences
from .trainer import PAPER_WINDOW, AlignConfig, train

__all__ = [
    "DEFENSES",
    "INITIAL_ALIGNMENT_WINDOW",
    "PAPER_WINDOW",
    "AlignBatch",
    "AlignConfig",
    "Defense",
    "ObjectiveTerms",
    "Sentences",
    "encode_sentences",
    "mosa_terms",
    "read_sentences",
    "reference_terms",
    "response_kl",
    "train",
]

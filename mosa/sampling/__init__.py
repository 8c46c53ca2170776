"""Samplers for masked diffusion LMs: LLaDA's ``generate`` and Dream's ``diffusion_generate``."""

from .cuda_graph import GraphCaptureError
from .dream import diffusion_generate
from .graph_sets import clear_cuda_graphs, limit_cuda_graph_memory
from .llada import generate
from .output import GenerateOutput
from .settings import (
    DREAM_REFERENCE,
    LLADA_EVALUATION,
    LLADA_REFERENCE,
    TINY_EVALUATION,
    DreamSampling,
    LLaDASampling,
)
from .texts import sample_texts

__all__ = [
    "DREAM_REFERENCE",
    "LLADA_EVALUATION",
    "LLADA_REFERENCE",
    "TINY_EVALUATION",
    "DreamSampling",
    "LLaDASampling",
    "GenerateOutput",
    "GraphCaptureError",
    "clear_cuda_graphs",
    "diffusion_generate",
    "generate",
    "limit_cuda_graph_memory",
    "sample_texts",
]

"""Samplers for masked diffusion LMs: LLaDA's ``generate``, Dream's ``diffusion_generate`` and
LLaDA2.x's block-diffusion ``block_generate``."""

from .block_generate import block_generate
from .cuda_graph import GraphCaptureError
from .dream import diffusion_generate
from .graph_sets import clear_cuda_graphs, limit_cuda_graph_memory
from .llada import generate
from .output import GenerateOutput
from .settings import (
    DREAM_REFERENCE,
    LLADA2_REFERENCE,
    LLADA21_REFERENCE,
    LLADA_EVALUATION,
    LLADA_REFERENCE,
    TINY_BLOCK_EVALUATION,
    TINY_EVALUATION,
    BlockDiffusionSampling,
    DreamSampling,
    LLaDASampling,
)
from .texts import sample_texts

__all__ = [
    "DREAM_REFERENCE",
    "LLADA2_REFERENCE",
    "LLADA21_REFERENCE",
    "LLADA_EVALUATION",
    "LLADA_REFERENCE",
    "TINY_BLOCK_EVALUATION",
    "TINY_EVALUATION",
    "BlockDiffusionSampling",
    "DreamSampling",
    "LLaDASampling",
    "GenerateOutput",
    "GraphCaptureError",
    "block_generate",
    "clear_cuda_graphs",
    "diffusion_generate",
    "generate",
    "limit_cuda_graph_memory",
    "sample_texts",
]

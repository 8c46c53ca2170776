"""Samplers for masked diffusion LMs: LLaDA's ``generate`` and Dream's ``diffusion_generate``."""

from .cuda_graph import clear_cuda_graphs
from .dream import diffusion_generate
from .llada import generate
from .output import GenerateOutput
from .texts import sample_texts

__all__ = ["GenerateOutput", "clear_cuda_graphs", "diffusion_generate", "generate", "sample_texts"]

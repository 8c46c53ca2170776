"""mosa: fast sampling and middle-token safety alignment (MOSA) for diffusion language models."""

from .models import from_hf, load_model
from .sampling import GenerateOutput, block_generate, diffusion_generate, generate

__all__ = [
    "GenerateOutput",
    "block_generate",
    "diffusion_generate",
    "from_hf",
    "generate",
    "load_model",
]

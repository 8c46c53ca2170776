"""mosa: fast sampling and middle-token safety alignment (MOSA) for diffusion language models."""

from .models import load_model as load_model

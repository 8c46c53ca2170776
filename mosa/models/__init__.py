"""LLaDA, Dream, LLaDA2.x and LLaDA-MoE as plain ``nn.Module``s that load real Hugging Face
checkpoint folders.

``load_model(path)`` reads ``config.json`` and safetensors shards directly (no
``trust_remote_code``); ``model(input_ids, attention_mask)`` returns hidden states after the
final norm, and logits on request; ``lm_head_weight`` feeds the fused ops; a ``KVCache``
serves the sampler's prefix and dual caching. Parameter names are the checkpoints' own, so
LoRA adapters made with ``peft`` load on the original models too, and ``from_hf(model)``
adopts a model of one of those families already loaded with transformers without copying its
tensors.
"""

from .adopt import adopt_model, from_hf, sampling_family
from .base import DiffusionLM, DiffusionLMOutput
from .cache import KVCache
from .config import DreamConfig, LLaDA2Config, LLaDAConfig, LLaDAMoEConfig
from .dream import DreamModel
from .families import FAMILIES, ModelFamily, family_of
from .llada import LLaDAModel
from .llada2 import LLaDA2Model
from .llada_moe import LLaDAMoEModel
from .loading import build_model, load_model
from .presets import DREAM_7B, LLADA2_MINI, LLADA_8B, LLADA_MOE_7B, PRESETS

__all__ = [
    "DREAM_7B",
    "FAMILIES",
    "LLADA2_MINI",
    "LLADA_8B",
    "LLADA_MOE_7B",
    "PRESETS",
    "DiffusionLM",
    "DiffusionLMOutput",
    "DreamConfig",
    "DreamModel",
    "KVCache",
    "LLaDA2Config",
    "LLaDA2Model",
    "LLaDAConfig",
    "LLaDAModel",
    "LLaDAMoEConfig",
    "LLaDAMoEModel",
    "ModelFamily",
    "adopt_model",
    "build_model",
    "family_of",
    "from_hf",
    "load_model",
    "sampling_family",
]

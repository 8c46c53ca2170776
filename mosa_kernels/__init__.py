"""Fused ops for masked diffusion language models.

One public function per op; each has a float64 torch reference in
``mosa_kernels.reference`` and runs on the backend that ``mosa_kernels.dispatch`` picks:
Triton for CUDA tensors, the compiled C++ kernels for CPU tensors, plain torch otherwise
(``MOSA_BACKEND=triton|cpu|torch`` forces one).
"""

from .dispatch import available_backends, backend_name
from .ops.attention import attention
from .ops.moe import moe_expert_loop, moe_swiglu, route_grouped_sigmoid, route_softmax
from .ops.sample_tokens import sample_tokens
from .ops.select_transfer import select_transfer
from .ops.token_logprobs import logprobs_from_logits, token_kl, token_logprobs

__all__ = [
    "attention",
    "available_backends",
    "backend_name",
    "logprobs_from_logits",
    "moe_expert_loop",
    "moe_swiglu",
    "route_grouped_sigmoid",
    "route_softmax",
    "sample_tokens",
    "select_transfer",
    "token_kl",
    "token_logprobs",
]

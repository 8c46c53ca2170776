"""Triton kernels (CUDA, or the interpreter with TRITON_INTERPRET=1): the backend interface
of ``mosa_kernels.interface``, with the semantics of ``mosa_kernels.torch_kernels``."""

from .attention import attention_backward, attention_forward
from .sample_tokens import sample_update
from .select_transfer import select_transfer
from .token_logprobs import kl_rows, logprob_rows

__all__ = [
    "attention_backward",
    "attention_forward",
    "kl_rows",
    "logprob_rows",
    "sample_update",
    "select_transfer",
]

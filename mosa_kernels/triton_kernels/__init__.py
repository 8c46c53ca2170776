"""Triton kernels (CUDA, or the interpreter with TRITON_INTERPRET=1): the backend interface
of ``mosa_kernels.torch_kernels``."""

from .sample_tokens import sample_update
from .select_transfer import select_transfer
from .token_logprobs import kl_rows, logprob_rows

__all__ = ["kl_rows", "logprob_rows", "sample_update", "select_transfer"]

"""The contract between the ops and the backends (docs/DESIGN.md §3, docs/CHANGING_AN_OP.md).

An op in ``mosa_kernels.ops`` checks its arguments, then calls the kernels of the backend that
``dispatch.kernels_for`` returns: ``torch_kernels`` (plain torch, the readable statement of
every kernel), ``cpu_kernels`` (the C++ kernels of ``csrc/``) or ``triton_kernels``. Each of
those modules implements :class:`Backend`, with the same names and parameter names; the
constants below are the layouts the kernels share with the ops and with C++, which reads them
through ``mosa_kernels._C.state_columns()``, ``transfer_rules()`` and ``dtype_codes()``.
``tests/kernels/test_backend_contract.py`` holds every backend to this module.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

# Columns of the float32 sampling state ``[N, STATE_WIDTH]`` that ``sample_update`` folds
# vocabulary chunks into (the meaning of each: ``torch_kernels``'s module docstring).
M, S, E, TOP2, BEST, BEST_C = range(6)
STATE_WIDTH = 6
STATE_COLUMNS = {"M": M, "S": S, "E": E, "TOP2": TOP2, "BEST": BEST, "BEST_C": BEST_C}

# ``select_transfer``'s rule codes, as the C++ kernel takes them (one of k/threshold/factor).
TOP_K, THRESHOLD, FACTOR = range(3)
TRANSFER_RULES = {"TOP_K": TOP_K, "THRESHOLD": THRESHOLD, "FACTOR": FACTOR}

# Codes of the element types the C++ kernels read and write, by torch dtype name.
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2, "float64": 3}

KERNELS = (
    "sample_update",
    "select_transfer",
    "logprob_rows",
    "kl_rows",
    "attention_forward",
    "attention_backward",
)


class Backend(Protocol):
    """The kernels one backend module provides; semantics in ``mosa_kernels.torch_kernels``.

    Every kernel takes arguments the op has already checked, on the backend's device.
    """

    # The parameter names and their order are the contract (the ops pass them by position);
    # tests/kernels/test_backend_contract.py compares every backend's against these.
    def sample_update(
        self, logits: Tensor, logits_uncond: Tensor | None, cfg_scale: float, col_offset: int,
        state: Tensor, best_index: Tensor, temperature: float, tempered_confidence: bool,
        seed: int, suppress: Tensor, exclude: Tensor,
    ) -> None:  # fmt: skip
        """Folds vocabulary columns into ``state`` ``[N, STATE_WIDTH]`` and ``best_index``."""

    def select_transfer(
        self, confidence: Tensor, is_masked: Tensor, k: Tensor | None, threshold: float | None,
        factor: float | None,
    ) -> Tensor:  # fmt: skip
        """Which masked positions a step commits, ``bool[B, W]``."""

    def logprob_rows(
        self, logits: Tensor, targets: Tensor, temperature: float, ignore_index: int,
        grad: Tensor | None, write_probs: bool,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """``(logp [n, K], lse [n])``; ``logits`` overwritten with probabilities or gradient."""

    def kl_rows(self, logits: Tensor, ref_logits: Tensor, grad: Tensor | None) -> Tensor:
        """KL per row ``[n]``; ``logits`` overwritten with the gradient when ``grad`` is given."""

    def attention_forward(
        self, q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor | None, scale: float,
        block_length: int,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """``(out [B, Lq, Hq, D], stats)``: ``stats``, what this backend's backward needs besides
        the inputs and ``out`` (Triton: the rows' log-sum-exp; torch: nothing, an empty tensor).
        ``block_length`` 0: non-causal; > 0: block-causal over the last Lq positions."""

    def attention_backward(
        self, grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor | None,
        out: Tensor, stats: Tensor, scale: float, needs_dq: bool, needs_dkdv: bool,
        block_length: int,
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # fmt: skip
        """``(dq, dk, dv)``, None where not asked for; ``stats`` from the same backend's forward."""

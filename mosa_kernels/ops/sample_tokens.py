"""``sample_tokens``: token choice and confidence in one pass over the vocabulary."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .. import interface
from ..dispatch import kernels_for
from ..random import RANDOM_CONFIDENCE_COLUMN, check_generator, seed_from, uniform
from ._checks import check_head, check_nonnegative, check_same_device, check_tensor, id_tensor

CONFIDENCES = ("prob", "margin", "neg_entropy", "random")
NONFINITE = ("raise", "mark")
_VOCAB_CHUNK_BYTES = 32 << 20


def sample_tokens(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    x_uncond: torch.Tensor | None = None,
    cfg_scale: float = 0.0,
    temperature: float = 0.0,
    confidence: str = "prob",
    tempered_confidence: bool = False,
    suppress: Sequence[int] | torch.Tensor = (),
    exclude_from_confidence: Sequence[int] | torch.Tensor = (),
    generator: torch.Generator | None = None,
    seed: int | None = None,
    vocab_chunk: int | None = None,
    nonfinite: str = "raise",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose a token per row and its confidence, without materialising probabilities.

    Args:
        x: logits ``[..., V]``, or hidden states ``[..., d]`` when ``weight`` is given.
        weight: LM-head weight ``[V, d]``; logits are then made chunk by chunk and never
            stored whole.
        bias: the LM head's bias ``[V]`` (fused-linear form only).
        x_uncond: the unconditional logits/hidden states for classifier-free guidance;
            the logits become ``u + (cfg_scale + 1) (l - u)``.
        cfg_scale: the guidance scale, a finite number >= 0.
        temperature: 0 picks the argmax (lowest id on ties, as ``torch.argmax``); T > 0
            samples from ``softmax(l / T)`` by Gumbel-max with counter-based noise, the same
            distribution as LLaDA's ``exp(l) / (-log u)^T``.
        confidence: ``'prob'`` (probability of the chosen token), ``'margin'`` (top-1 minus
            top-2 probability, Dream ``topk_margin``), ``'neg_entropy'`` (sum p log p, Dream
            ``entropy``) or ``'random'`` (uniform, LLaDA random remasking).
        tempered_confidence: compute the confidence from ``softmax(l / T)`` (Dream) instead of
            the un-tempered ``softmax(l)`` (LLaDA).
        suppress: token ids whose logits are -inf before sampling (LLaDA ``logits_eos_inf``).
        exclude_from_confidence: ids left out of the confidence distribution *after* the
            token is chosen; a chosen excluded id gets probability 0 (LLaDA
            ``confidence_eos_eot_inf``).
        generator / seed: the source of randomness for T > 0 and ``'random'``; a CPU
            generator or an int. With neither, torch's default CPU generator is used.
        vocab_chunk: vocabulary columns per chunk in the fused-linear form.
        nonfinite: what to do with a row whose logits are not all finite numbers or -inf
            (a NaN, a +inf, or every logit -inf, e.g. ``suppress`` covering the vocabulary),
            which has no token to choose. ``'raise'`` (default): a ValueError naming the
            rows, at the price of one host read of a per-row flag. ``'mark'``: such rows get
            token -1 and confidence NaN, with no host read, for callers that must not
            synchronise (the samplers' steps, docs/DESIGN.md §4.2) and check the token.

    Returns:
        ``(token int64[...], confidence float32[...])`` over the leading dimensions of ``x``.
    """
    check_tensor("x", x, floating=True)
    if confidence not in CONFIDENCES:
        raise ValueError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}")
    check_nonnegative("temperature", temperature)
    check_nonnegative("cfg_scale", cfg_scale, " (0: no guidance)")
    check_generator(generator)
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
    if x_uncond is not None:
        check_tensor("x_uncond", x_uncond, floating=True)
        if x_uncond.shape != x.shape or x_uncond.dtype != x.dtype:
            raise ValueError(
                f"x_uncond must match x in shape and dtype: {tuple(x_uncond.shape)} "
                f"{x_uncond.dtype} vs {tuple(x.shape)} {x.dtype}"
            )
    if weight is not None:
        check_head("x", x, weight, bias)
    elif bias is not None:
        raise ValueError("bias is the LM head's; give it with weight (the fused-linear form)")
    device = check_same_device(x=x, weight=weight, bias=bias, x_uncond=x_uncond)
    vocab_size = weight.shape[0] if weight is not None else x.shape[-1]
    if vocab_size == 0:
        where = "weight has no rows" if weight is not None else "x's last dimension is 0"
        raise ValueError(f"the vocabulary is empty ({where}); give logits [..., V] with V >= 1")
    suppress_ids = id_tensor("suppress", suppress, vocab_size, device)
    # The length test first: unique() reads the host, which a sampler's graph step must not.
    if suppress_ids.numel() >= vocab_size and suppress_ids.unique().numel() == vocab_size:
        raise ValueError(
            f"suppress covers the whole vocabulary ({vocab_size} ids), so no token can be "
            "chosen; leave at least one id unsuppressed"
        )
    exclude_ids = id_tensor("exclude_from_confidence", exclude_from_confidence, vocab_size, device)
    if seed is None:
        needs_noise = temperature > 0 or confidence == "random"
        seed = seed_from(generator) if needs_noise else 0

    lead = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    rows_uncond = None if x_uncond is None else x_uncond.reshape(rows.shape).contiguous()
    n = rows.shape[0]
    state = torch.full((n, interface.STATE_WIDTH), float("-inf"), device=device)
    state[:, interface.S] = 0.0
    state[:, interface.E] = 0.0
    best_index = torch.full((n,), -1, dtype=torch.int64, device=device)
    if n == 0:
        return best_index.reshape(lead), state[:, 0].reshape(lead)

    kernels = kernels_for(device)

    def fold(logits, logits_uncond, col_offset):
        kernels.sample_update(
            logits, logits_uncond, float(cfg_scale), col_offset, state, best_index,
            float(temperature), bool(tempered_confidence), int(seed), suppress_ids, exclude_ids,
        )  # fmt: skip

    if weight is None:
        fold(rows, rows_uncond, 0)
    else:
        if vocab_chunk is None:
            vocab_chunk = max(1024, _VOCAB_CHUNK_BYTES // (n * rows.element_size()))
        for start in range(0, vocab_size, vocab_chunk):
            w = weight[start : start + vocab_chunk]
            b = None if bias is None else bias[start : start + vocab_chunk]
            fold(
                F.linear(rows, w, b),
                None if rows_uncond is None else F.linear(rows_uncond, w, b),
                start,
            )

    conf = _confidence_from_state(state, confidence, seed)
    # M is the running max and S the sum of exp(c - M): both finite and S > 0 exactly when
    # the row's logits hold no NaN or +inf and not every one is -inf. The backends disagree
    # on the token of such a row (each max skips or keeps NaN its own way), so it is set here.
    invalid = ~(torch.isfinite(state[:, interface.M]) & (state[:, interface.S] > 0))
    invalid |= ~torch.isfinite(state[:, interface.S])
    token = torch.where(invalid, -1, best_index)
    conf = torch.where(invalid, float("nan"), conf)
    if nonfinite == "raise" and bool(invalid.any()):
        _raise_nonfinite(invalid.reshape(lead))
    return token.reshape(lead), conf.reshape(lead)


def _raise_nonfinite(invalid: torch.Tensor) -> None:
    rows = [tuple(index) if len(index) > 1 else index[0] for index in invalid.nonzero().tolist()]
    shown = ", ".join(map(str, rows[:8])) + (f" and {len(rows) - 8} more" if len(rows) > 8 else "")
    raise ValueError(
        f"x has rows whose logits hold NaN or +inf, or are all -inf (e.g. suppress covering "
        f"the whole vocabulary), so no token can be chosen: rows {shown} of its leading "
        "dimensions; check the model's weights and inputs for NaN/inf"
    )


def _confidence_from_state(state: torch.Tensor, confidence: str, seed: int) -> torch.Tensor:
    top, total = state[:, interface.M], state[:, interface.S]
    if confidence == "prob":
        return torch.exp(state[:, interface.BEST_C] - top) / total
    if confidence == "margin":
        return (1.0 - torch.exp(state[:, interface.TOP2] - top)) / total
    if confidence == "neg_entropy":
        return state[:, interface.E] / total - torch.log(total)
    rows = torch.arange(state.shape[0], device=state.device)
    column = torch.tensor(RANDOM_CONFIDENCE_COLUMN, device=state.device)
    return uniform(seed, rows, column).float()

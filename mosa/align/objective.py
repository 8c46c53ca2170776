"""The MOSA objective on one batch (docs/DESIGN.md §7), with the fused head ops.

The policy and the reference each run once over ``prompt + gen_length masks``; only hidden
states leave the model. ``token_logprobs`` scores every sentence token at every response
position the window can reach (K targets per position share one log-sum-exp), and the score of
a sentence at offset ``k`` is a diagonal sum of that table. ``token_kl`` gives the per-position
KL over the vocabulary chunk by chunk, so no ``[B, L, V]`` tensor is ever formed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mosa_kernels import token_kl, token_logprobs

IGNORE = -100


@dataclass
class AlignBatch:
    """One batch of the objective.

    Attributes:
        input_ids: ``[B, P + G]``: the chat-templated prompt (left-padded) then G mask tokens.
        attention_mask: ``[B, P + G]`` bool (False at padding) or None.
        gen_length: G.
        positive: ``[B, n+]`` ids of each row's refusal sentence, right-padded with ``IGNORE``.
        negative: ``[B, n-]`` ids of each row's harmful continuation, padded likewise.
        allowed_plus, allowed_minus: ``[B, n_offsets]`` bool, the offsets of the window each
            row may place its refusal / harmful continuation at (None: all of them). The
            ``anywhere`` defense uses them to skip tokens committed in the canvas and to give
            each row its own window.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    gen_length: int
    positive: torch.Tensor
    negative: torch.Tensor
    allowed_plus: torch.Tensor | None = None
    allowed_minus: torch.Tensor | None = None

    def to(self, device) -> AlignBatch:
        return _moved(self, device)


@dataclass
class EosBatch:
    """One batch of the A2D objective: ``input_ids`` ``[B, P + G]`` (prompt, then a response
    canvas holding a partly masked harmful continuation) and ``targets`` ``[B, G]``: the EOS id
    at the masked positions the continuation covers, ``IGNORE`` elsewhere."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    gen_length: int
    targets: torch.Tensor

    def to(self, device) -> EosBatch:
        return _moved(self, device)


def _moved(batch, device):
    """``batch`` (a dataclass) with every tensor field on ``device``."""
    tensors = {k: v.to(device) for k, v in vars(batch).items() if isinstance(v, torch.Tensor)}
    return dataclasses.replace(batch, **tensors)


@dataclass
class ObjectiveTerms:
    """Per-row terms (``[B]``) of ``loss = -(R+ - R- - beta KL)``; ``best_*`` are the offsets
    where the maxima were taken."""

    reward_plus: torch.Tensor
    reward_minus: torch.Tensor
    kl: torch.Tensor
    best_plus: torch.Tensor
    best_minus: torch.Tensor

    @property
    def reward(self) -> torch.Tensor:
        return self.reward_plus - self.reward_minus

    def loss(self, beta: float) -> torch.Tensor:
        """``-(R - beta KL)`` per row."""
        return -(self.reward - beta * self.kl)


def sentence_lengths(sentences: torch.Tensor) -> torch.Tensor:
    """Tokens per row of an ``IGNORE``-padded sentence tensor."""
    return (sentences != IGNORE).sum(dim=1)


def check_window(window: tuple[int, int], gen_length: int, longest_sentence: int) -> None:
    """Raises ValueError unless offset ``window[0]`` lets the longest sentence fit the canvas."""
    first, last = window
    if not 0 <= first <= last:
        raise ValueError(f"window must be (first, last) with 0 <= first <= last, got {window}")
    if first + longest_sentence > gen_length:
        raise ValueError(
            f"window starts at response token {first} but a {longest_sentence}-token sentence "
            f"placed there overruns gen_length={gen_length}; raise gen_length to at least "
            f"{first + longest_sentence} or move the window earlier"
        )


def window_span(window: tuple[int, int], gen_length: int, longest_sentence: int) -> range:
    """Response positions some sentence token can occupy at some offset of ``window``."""
    first, last = window
    return range(first, min(last + longest_sentence, gen_length))


def offset_scores(
    logp: torch.Tensor,
    sentences: torch.Tensor,
    window: tuple[int, int],
    gen_length: int,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """``score(S, k)`` for every offset of ``window``: ``[B, n_offsets]`` (-inf where S does not
    fit, or where ``allowed`` ``[B, n_offsets]`` is False).

    ``logp[b, j - window[0], m]`` is ``log p(response[j] = sentences[b, m])`` over the span of
    ``window_span``; an ``IGNORE`` entry of ``sentences`` holds 0 there.
    """
    first, last = window
    n = sentences.shape[1]
    offsets = torch.arange(first, last + 1, device=logp.device)
    token = torch.arange(n, device=logp.device)
    rows = (offsets[:, None] + token[None, :] - first).clamp(max=logp.shape[1] - 1)
    scores = logp[:, rows, token[None, :].expand_as(rows)].sum(dim=-1)
    fits = offsets[None, :] + sentence_lengths(sentences)[:, None] <= gen_length
    if allowed is not None:
        fits = fits & allowed
    return scores.masked_fill(~fits, float("-inf"))


def score_window(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    batch: AlignBatch,
    window: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(R+, R-, best_plus, best_minus)`` from the response hidden states ``[B, G, d]``."""
    positive, negative = batch.positive, batch.negative
    longest = max(positive.shape[1], negative.shape[1])
    span = window_span(window, batch.gen_length, longest)
    targets = torch.cat([positive, negative], dim=1)
    targets = targets[:, None, :].expand(-1, len(span), -1)
    logp = token_logprobs(
        hidden[:, span.start : span.stop], weight, targets, bias=bias, ignore_index=IGNORE
    )
    n_plus = positive.shape[1]
    plus = offset_scores(logp[..., :n_plus], positive, window, batch.gen_length, batch.allowed_plus)
    minus = offset_scores(
        logp[..., n_plus:], negative, window, batch.gen_length, batch.allowed_minus
    )
    # max() routes the gradient to the best offset only, as the objective asks.
    reward_plus, best_plus = plus.max(dim=1)
    reward_minus, best_minus = minus.max(dim=1)
    return reward_plus, reward_minus, best_plus + window[0], best_minus + window[0]


def response_hidden(hidden: torch.Tensor, gen_length: int, logits_shift: int) -> torch.Tensor:
    """The hidden states that predict the G response tokens (Dream's come one slot earlier)."""
    end = hidden.shape[1] - logits_shift
    return hidden[:, end - gen_length : end]


Forward = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
"""``(input_ids, attention_mask) -> hidden_states [B, L, d]``."""


def response_states(
    policy: Forward,
    reference: Forward,
    logits_shift: int,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    gen_length: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Response hidden states ``[B, G, d]`` of the policy (with graph) and of the reference."""
    hidden = response_hidden(policy(input_ids, attention_mask), gen_length, logits_shift)
    with torch.no_grad():
        ref_hidden = response_hidden(reference(input_ids, attention_mask), gen_length, logits_shift)
    return hidden, ref_hidden.to(hidden.dtype)


def mosa_terms(
    policy: Forward,
    reference: Forward,
    head: tuple[torch.Tensor, torch.Tensor | None],
    logits_shift: int,
    batch: AlignBatch,
    window: tuple[int, int],
) -> ObjectiveTerms:
    """The objective's terms for ``batch``: one policy forward, one reference forward.

    ``head`` is the (frozen or trainable) LM head ``(weight [V, d], bias [V] or None)``.
    """
    longest = max(batch.positive.shape[1], batch.negative.shape[1])
    check_window(window, batch.gen_length, longest)
    weight, bias = head
    hidden, ref_hidden = response_states(
        policy, reference, logits_shift, batch.input_ids, batch.attention_mask, batch.gen_length
    )
    reward_plus, reward_minus, best_plus, best_minus = score_window(
        hidden, weight, bias, batch, window
    )
    kl = token_kl(hidden, ref_hidden, weight, bias=bias).sum(dim=1)
    return ObjectiveTerms(reward_plus, reward_minus, kl, best_plus, best_minus)


def response_kl(
    policy: Forward,
    reference: Forward,
    head: tuple[torch.Tensor, torch.Tensor | None],
    logits_shift: int,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    gen_length: int,
) -> torch.Tensor:
    """Summed KL(p_policy || p_ref) over the response positions, per row (benign regulariser)."""
    weight, bias = head
    hidden, ref_hidden = response_states(
        policy, reference, logits_shift, input_ids, attention_mask, gen_length
    )
    return token_kl(hidden, ref_hidden, weight, bias=bias).sum(dim=1)


def a2d_terms(
    policy: Forward,
    head: tuple[torch.Tensor, torch.Tensor | None],
    logits_shift: int,
    batch: EosBatch,
) -> ObjectiveTerms:
    """A2D's term for ``batch``: ``reward_plus`` is the mean ``log p(EOS)`` over each row's
    target positions (so ``loss`` is its negative); one policy forward, no reference (the
    benign KL keeps utility)."""
    weight, bias = head
    hidden = response_hidden(
        policy(batch.input_ids, batch.attention_mask), batch.gen_length, logits_shift
    )
    logp = token_logprobs(hidden, weight, batch.targets[..., None], bias=bias, ignore_index=IGNORE)
    counts = (batch.targets != IGNORE).sum(dim=1).clamp(min=1)
    eos = logp[..., 0].sum(dim=1) / counts
    zeros = torch.zeros_like(eos)
    none = torch.zeros_like(counts)
    return ObjectiveTerms(eos, zeros, zeros, none, none)

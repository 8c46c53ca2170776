"""The MOSA objective on one batch (docs/DESIGN.md §7), with the fused head ops.

The policy and the reference each run once over ``prompt + gen_length masks``; only hidden
states leave the model. For a block-diffusion model (LLaDA2) the canvas is laid out as
``block_generate`` lays it out (``lay_out_blocks``) and run block-causally (docs/DESIGN.md §7). ``token_logprobs`` scores every sentence token at every response
position the window can reach (K targets per position share one log-sum-exp), and the score of
a sentence at offset ``k`` is a diagonal sum of that table. ``token_kl`` gives the per-position
KL over the vocabulary chunk by chunk, so no ``[B, L, V]`` tensor is ever formed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mosa.sampling.block_canvas import BlockCanvas
from mosa.text.canvas import Canvas
from mosa_kernels import token_kl, token_logprobs

IGNORE = -100


@dataclass
class ResponseCanvas:
    """What a forward runs on: ``input_ids`` ``[B, L]`` (the chat-templated prompt, left-padded,
    then the G response positions), ``attention_mask`` ``[B, L]`` bool (False at padding) or
    None, ``gen_length`` G.

    ``block_length`` (keyword): None runs the model bidirectionally and the response is the last
    G slots; a block length means the canvas is ``block_generate``'s (``lay_out_blocks``), run
    block-causally, and row b's response starts at slot ``response_start[b]`` (``int64[B]``).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    gen_length: int
    response_start: torch.Tensor | None = field(default=None, kw_only=True)
    block_length: int | None = field(default=None, kw_only=True)

    def to(self, device):
        return _moved(self, device)

    def response_slots(self) -> torch.Tensor:
        """``int64[B, G]``: the slot of each row's response position."""
        offsets = torch.arange(self.gen_length, device=self.input_ids.device)
        if self.response_start is None:
            start = self.input_ids.shape[1] - self.gen_length
            return (start + offsets).expand(self.input_ids.shape[0], -1)
        return self.response_start[:, None] + offsets


def lay_out_blocks(canvas, block_length: int, mask_id: int, pad_id: int):
    """``canvas`` (a ``ResponseCanvas`` or subclass) on ``block_generate``'s aligned canvas
    (``BlockCanvas.lay_out``): each row shifted right by a multiple of ``block_length`` so its
    blocks count from its own position 0, masks filling the last block, ``pad_id`` the slots
    left of each row (never attended). Response tokens already in ``canvas`` (the A2D and
    anywhere canvases' committed pieces) move with their row. Reads the prompt lengths on the
    host: lay out on the host before moving the batch."""
    prompts = Canvas(
        canvas.input_ids, canvas.attention_mask, canvas.input_ids.shape[1] - canvas.gen_length
    )
    blocks = BlockCanvas.lay_out(prompts, block_length, mask_id, pad_id)
    return dataclasses.replace(
        canvas,
        input_ids=blocks.x,
        attention_mask=blocks.key_valid,
        response_start=blocks.response_start,
        block_length=block_length,
    )


@dataclass
class AlignBatch(ResponseCanvas):
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
        response_start, block_length: a block canvas's (``ResponseCanvas``).
    """

    positive: torch.Tensor
    negative: torch.Tensor
    allowed_plus: torch.Tensor | None = None
    allowed_minus: torch.Tensor | None = None


@dataclass
class EosBatch(ResponseCanvas):
    """One batch of the A2D objective: ``input_ids`` ``[B, P + G]`` (prompt, then a response
    canvas holding a partly masked harmful continuation) and ``targets`` ``[B, G]``: the EOS id
    at the masked positions the continuation covers, ``IGNORE`` elsewhere."""

    targets: torch.Tensor


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


Forward = Callable[..., torch.Tensor]
"""``(input_ids, attention_mask) -> hidden_states [B, L, d]``; called with ``block_length=``
too (keyword) for a block-causal canvas."""


def run_forward(forward: Forward, canvas: ResponseCanvas) -> torch.Tensor:
    """``forward`` on ``canvas``, block-causally when it has a ``block_length``."""
    if canvas.block_length is None:
        return forward(canvas.input_ids, canvas.attention_mask)
    return forward(canvas.input_ids, canvas.attention_mask, block_length=canvas.block_length)


def response_hidden(hidden: torch.Tensor, canvas: ResponseCanvas, logits_shift: int):
    """The hidden states ``[B, G, d]`` that predict each row's G response tokens (Dream's
    come one slot earlier), gathered per row on a block canvas."""
    if canvas.response_start is None:
        end = hidden.shape[1] - logits_shift
        return hidden[:, end - canvas.gen_length : end]
    slots = canvas.response_slots() - logits_shift
    return hidden.gather(1, slots[..., None].expand(-1, -1, hidden.shape[-1]))


def response_states(
    policy: Forward, reference: Forward, logits_shift: int, canvas: ResponseCanvas
) -> tuple[torch.Tensor, torch.Tensor]:
    """Response hidden states ``[B, G, d]`` of the policy (with graph) and of the reference,
    both on the same canvas and attention."""
    hidden = response_hidden(run_forward(policy, canvas), canvas, logits_shift)
    with torch.no_grad():
        ref_hidden = response_hidden(run_forward(reference, canvas), canvas, logits_shift)
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
    hidden, ref_hidden = response_states(policy, reference, logits_shift, batch)
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
    canvas: ResponseCanvas,
) -> torch.Tensor:
    """Summed KL(p_policy || p_ref) over the response positions, per row (benign regulariser)."""
    weight, bias = head
    hidden, ref_hidden = response_states(policy, reference, logits_shift, canvas)
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
    hidden = response_hidden(run_forward(policy, batch), batch, logits_shift)
    logp = token_logprobs(hidden, weight, batch.targets[..., None], bias=bias, ignore_index=IGNORE)
    counts = (batch.targets != IGNORE).sum(dim=1).clamp(min=1)
    eos = logp[..., 0].sum(dim=1) / counts
    zeros = torch.zeros_like(eos)
    none = torch.zeros_like(counts)
    return ObjectiveTerms(eos, zeros, zeros, none, none)

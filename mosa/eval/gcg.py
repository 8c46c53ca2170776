"""GCG for diffusion LMs: a white-box suffix search (docs/DESIGN.md §8, ``gcg``).

Greedy Coordinate Gradient (Zou et al., 2023) adapted to a bidirectional masked model: a
suffix of ``suffix_length`` tokens is appended to the user's prompt (inside the chat template,
before the end of the turn) and optimised so that, in the *fully masked* response canvas of
``gen_length`` tokens, the model puts a target phrase at response positions
``[position, position + len(target))``. One forward pass gives every position's distribution,
so the loss is

    loss(suffix) = - sum_j log p(response[position + j] = target_j | prompt, suffix, masks)

Each step takes the gradient of the loss with respect to the one-hot suffix (through the input
embeddings), keeps the ``top_k`` tokens with the most negative gradient per suffix slot,
evaluates ``candidates`` random single-token swaps in one batched forward pass and keeps the
best one if it lowers the loss. ``position=0`` attacks the start of the response, a later
``position`` its middle: the paper's initial-vs-middle experiment.

Only ordinary tokens are tried (no special, mask, pad or EOS tokens), and only suffixes whose
text tokenizes back to the same ids, so the prompt the search scored is the prompt the sampler
gets (``GCGResult.prompt_with_suffix``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mosa.models.families import is_block_diffusion
from mosa.sampling.block_canvas import BlockCanvas
from mosa.sampling.buckets import bucket_pad_id
from mosa.text.canvas import build_canvas
from mosa_kernels import token_logprobs

from .attacked import AttackedPrompt, build_response_canvas

# Filler of the first suffix, as in the original GCG ("! ! ! ..."); the first ordinary token
# of the vocabulary that re-tokenizes cleanly stands in when "!" is not one token.
_FILLER = "!"
_FILLER_TRIES = 100
_SLOT = "\x00mosa-gcg-slot\x00"


@dataclass(frozen=True)
class GCGResult:
    """The optimised suffix and the loss before the first step and after each step.

    ``losses[0]`` is the initial suffix's loss, ``losses[i]`` the loss after step ``i``
    (non-increasing: a step keeps its best swap only if it lowers the loss). The loss is
    ``-sum log p`` of the target's tokens at their response positions.
    """

    suffix_ids: list[int]
    suffix_text: str
    losses: list[float]
    prompt_with_suffix: str

    @property
    def loss(self) -> float:
        """The loss of the returned suffix."""
        return self.losses[-1]

    def attacked_prompt(self) -> AttackedPrompt:
        """The prompt with the suffix, nothing fixed in the canvas: what the sampler gets."""
        return AttackedPrompt(self.prompt_with_suffix)


def gcg_search(
    model,
    tokenizer,
    prompt: str,
    target: str,
    *,
    position: int,
    gen_length: int,
    suffix_length: int = 8,
    steps: int = 50,
    top_k: int = 32,
    candidates: int = 64,
    seed: int = 0,
    progress: bool = False,
    block_length: int | None = None,
) -> GCGResult:
    """Searches a suffix for ``prompt`` that raises ``log p(target)`` at response tokens
    ``[position, position + len(target))`` of a fully masked canvas of ``gen_length``.

    ``model`` is a ``mosa`` model (it takes ``inputs_embeds`` and exposes its LM head); its
    mode is left as it is (call ``.eval()`` first). All randomness comes from a
    ``torch.Generator`` seeded with ``seed``, so a search repeats exactly on one device.
    Raises ``ValueError`` when the target is empty, has words the tokenizer does not know, or
    does not fit the canvas, and for settings out of range.

    A block-diffusion model (LLaDA2) needs ``block_length``, its sampler's: the canvas is
    laid out as ``block_generate`` lays it out (``BlockCanvas``: whole blocks from the
    sequence's start, the last one running past the response) and run under block-causal
    attention, so the target's log-probability at position ``k`` sees the blocks up to
    ``k``'s only, as the step that first decodes ``k``'s block would with the earlier blocks
    still masked (at ``position=0``, in the first decoded block, exactly the first step's).
    Other models ignore ``block_length`` (LLaDA's and Dream's forward is bidirectional).
    """
    if not hasattr(model, "lm_head_weight") or not hasattr(model, "get_input_embeddings"):
        raise TypeError(
            f"gcg_search needs a mosa model (hidden states, lm_head_weight and inputs_embeds), "
            f"got {type(model).__name__}"
        )
    for name, value, low in (
        ("suffix_length", suffix_length, 1),
        ("steps", steps, 0),
        ("top_k", top_k, 1),
        ("candidates", candidates, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"target must be a non-empty phrase, got {target!r}")
    mask_id = model.mask_token_id
    # The canvas builder checks position, unknown words and the fit in gen_length.
    canvas = build_response_canvas(tokenizer, [(position, target)], gen_length, mask_id)
    target_ids = canvas[canvas != mask_id].to(model.device)

    layout = _Layout(tokenizer, prompt)
    allowed = _ordinary_tokens(tokenizer, model)
    suffix = _initial_suffix(tokenizer, layout, allowed, suffix_length)
    # Hidden state ``i - logits_shift`` predicts token ``i`` (Dream predicts from the left).
    first_row = len(layout.prefix_ids) + suffix_length + len(layout.after_ids) + position
    rows = torch.arange(len(target_ids), device=model.device) + first_row - model.logits_shift
    if is_block_diffusion(model) and block_length is None:
        raise ValueError(
            f"{type(model).__name__} decodes block by block: pass block_length= (the sampler's, "
            "e.g. runner settings' block_length) so the search scores the canvas it decodes"
        )
    if not is_block_diffusion(model):
        block_length = None
    scorer = _Scorer(model, layout, gen_length, rows, target_ids, suffix_length, block_length)
    generator = torch.Generator().manual_seed(seed)

    current = torch.tensor(suffix, dtype=torch.long, device=model.device)
    losses = [scorer.losses(current[None]).item()]
    bar = tqdm(range(steps), desc="gcg", unit="step", disable=not progress)
    for _ in bar:
        gradient = scorer.gradient(current)
        gradient[:, ~allowed] = float("inf")
        top = (-gradient).topk(min(top_k, int(allowed.sum())), dim=1).indices.cpu()
        swaps = _random_swaps(current.cpu(), top, candidates, generator)
        swaps = swaps[layout.round_trips(swaps)]
        if len(swaps):
            trial = scorer.losses(swaps.to(model.device))
            best = int(trial.argmin())
            if trial[best].item() < losses[-1]:
                current = swaps[best].to(model.device)
                losses.append(trial[best].item())
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                continue
        losses.append(losses[-1])
    suffix_ids = current.tolist()
    text = layout.suffix_text(suffix_ids)
    return GCGResult(suffix_ids, text, losses, layout.prompt_with(text))


class _Layout:
    """How the chat template places the prompt and its suffix: the ids before the suffix (the
    template's opening and the prompt), the ids after it (the end of turn and the assistant's
    opening), and whether a suffix's text tokenizes back to its ids in that context."""

    def __init__(self, tokenizer, prompt: str):
        self.tokenizer = tokenizer
        self.prompt = prompt
        if getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": _SLOT}], add_generation_prompt=True, tokenize=False
            )
            if rendered.count(_SLOT) != 1:
                raise ValueError("the tokenizer's chat template must show the user's text once")
            self.before, _, self.after = rendered.partition(_SLOT)
        else:  # encode_prompts feeds the raw prompt too
            self.before, self.after = "", ""
        self.prefix_ids = self._encode(self.before + prompt)
        self.after_ids = self._encode(self.after)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def suffix_text(self, suffix_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(suffix_ids)).strip()

    def prompt_with(self, suffix_text: str) -> str:
        return f"{self.prompt} {suffix_text}"

    def round_trips(self, suffixes: torch.Tensor) -> torch.Tensor:
        """``bool[C]``: which suffixes ``[C, n]`` give back ``prefix + suffix + after`` ids when
        their text, in the prompt and the template, is tokenized."""
        texts = [
            self.before + self.prompt_with(self.suffix_text(row)) + self.after
            for row in suffixes.tolist()
        ]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return torch.tensor(
            [
                ids == self.prefix_ids + row + self.after_ids
                for ids, row in zip(encoded, suffixes.tolist(), strict=True)
            ],
            dtype=torch.bool,
        )


class _Scorer:
    """The loss of suffixes: the sequence ``prefix, suffix, after, masks`` through the model,
    ``-sum log p(target)`` at the target's rows. With ``block_length`` (a block-diffusion
    model) the masks run to the end of the last block, as ``block_generate``'s canvas, and
    the forward is block-causal."""

    def __init__(
        self, model, layout: _Layout, gen_length: int, rows, target_ids, suffix_length,
        block_length=None,
    ):  # fmt: skip
        device, mask_id = model.device, model.mask_token_id
        self.model, self.block_length = model, block_length
        self.prefix = torch.tensor(layout.prefix_ids, dtype=torch.long, device=device)
        after = torch.tensor(layout.after_ids, dtype=torch.long, device=device)
        if block_length is None:
            masks = torch.full((gen_length,), mask_id, dtype=torch.long, device=device)
            self.after = torch.cat([after, masks])
        else:
            # block_generate's canvas of the prompt (any suffix: its length is what counts),
            # one unpadded row: the prompt, the response's masks and the last block's overrun.
            pad_id = bucket_pad_id(model, mask_id)
            suffix = torch.full((suffix_length,), pad_id, dtype=torch.long, device=device)
            prompt = torch.cat([self.prefix, suffix, after])[None]
            canvas = BlockCanvas.lay_out(
                build_canvas(prompt, None, gen_length, mask_id), block_length, mask_id, pad_id
            )
            self.after = canvas.x[0, len(self.prefix) + suffix_length :]
        self.rows = rows
        self.target_ids = target_ids
        # The head is constant here: detached, token_logprobs computes no head gradient.
        self.weight = model.lm_head_weight.detach()
        self.bias = None if model.lm_head_bias is None else model.lm_head_bias.detach()

    def _loss(self, hidden: torch.Tensor) -> torch.Tensor:
        picked = hidden[:, self.rows]
        targets = self.target_ids.expand(len(hidden), -1)
        logp = token_logprobs(picked, self.weight, targets, bias=self.bias)
        return -logp.sum(dim=1)

    @torch.no_grad()
    def losses(self, suffixes: torch.Tensor) -> torch.Tensor:
        """``float32[C]`` for suffixes ``[C, n]``, in one batched forward pass."""
        count = len(suffixes)
        ids = torch.cat(
            [self.prefix.expand(count, -1), suffixes, self.after.expand(count, -1)], dim=1
        )
        return self._loss(self.model(ids, block_length=self.block_length).hidden_states).cpu()

    def gradient(self, suffix: torch.Tensor) -> torch.Tensor:
        """``d loss / d one_hot(suffix)``: ``float32[n, V]`` over the embedding's rows."""
        embedding = self.model.get_input_embeddings().weight.detach()
        one_hot = torch.zeros(
            len(suffix), len(embedding), dtype=embedding.dtype, device=suffix.device
        )
        one_hot[torch.arange(len(suffix)), suffix] = 1
        one_hot.requires_grad_()
        with torch.no_grad():
            prefix = embedding[self.prefix]
            after = embedding[self.after]
        embeds = torch.cat([prefix, one_hot @ embedding, after])[None]
        with torch.enable_grad():
            out = self.model(inputs_embeds=embeds, block_length=self.block_length)
            loss = self._loss(out.hidden_states).sum()
            (gradient,) = torch.autograd.grad(loss, one_hot)
        return gradient.float()


def _ordinary_tokens(tokenizer, model) -> torch.Tensor:
    """``bool[V_embedding]``: ids the suffix may hold — inside both the tokenizer's and the
    head's vocabulary, and none of the special, mask, pad or EOS tokens."""
    width = model.get_input_embeddings().num_embeddings
    allowed = torch.zeros(width, dtype=torch.bool, device=model.device)
    allowed[: min(len(tokenizer), model.vocab_size, width)] = True
    eos = model.eos_token_id
    special = [*tokenizer.all_special_ids, model.mask_token_id, model.pad_token_id]
    special += list(eos) if isinstance(eos, tuple | list) else [eos]
    for token in special:
        if token is not None and 0 <= token < width:
            allowed[token] = False
    if not allowed.any():
        raise ValueError("the tokenizer has no ordinary tokens to build a suffix from")
    return allowed


def _initial_suffix(tokenizer, layout: _Layout, allowed: torch.Tensor, length: int) -> list[int]:
    """``length`` copies of one filler token whose repetition re-tokenizes to itself."""
    filler = tokenizer(_FILLER, add_special_tokens=False)["input_ids"]
    choices = filler[:1] if len(filler) == 1 else []
    choices += allowed.nonzero().flatten()[:_FILLER_TRIES].tolist()
    for token in choices:
        suffix = torch.full((1, length), token, dtype=torch.long)
        if allowed[token] and layout.round_trips(suffix)[0]:
            return [token] * length
    raise ValueError(
        f"none of the first {_FILLER_TRIES} ordinary tokens, repeated, tokenizes back to itself "
        "after the prompt; this tokenizer does not suit the GCG search"
    )


def _random_swaps(
    suffix: torch.Tensor, top: torch.Tensor, count: int, generator: torch.Generator
) -> torch.Tensor:
    """``count`` copies of ``suffix`` ``[n]``, each with one random slot set to one of that
    slot's ``top`` ``[n, k]`` tokens, chosen at random."""
    slots = torch.randint(len(suffix), (count,), generator=generator)
    picks = torch.randint(top.shape[1], (count,), generator=generator)
    swaps = suffix.repeat(count, 1)
    swaps[torch.arange(count), slots] = top[slots, picks]
    return swaps

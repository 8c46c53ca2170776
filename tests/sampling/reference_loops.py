"""Straightforward sampler loops the tests compare ``mosa.sampling`` against.

Written from the published algorithms (LLaDA's ``generate.py``, Dream's ``_sample``, docs/DESIGN.md §6),
not from ``mosa.sampling``: whole-sequence logits every step, a dense softmax in float64, an
explicit sort per row. Deliberate deviations from the published code, so that exact equality
is well defined:

- confidence ties go to the lower position (``torch.topk`` leaves their order unspecified);
- randomness comes from the counter-based generator of ``mosa_kernels.random`` (one 32-bit
  seed per step from ``seed_from(generator)``; Gumbel noise at ``(row, vocab id)`` and the
  ``'random'`` remasking confidence at ``(row, RANDOM_CONFIDENCE_COLUMN)``, rows numbered
  ``b * W + j`` over the window ``[w, end)`` of ``W`` positions). The published code draws
  ``torch.rand``; the distribution is the same (Gumbel-max), the numbers are not;
- Dream's entropy confidence is the exact ``sum p log p`` (Dream adds 1e-10 inside the log;
  ``dream_entropy_epsilon=True`` gives that form, so a test can check that the two forms rank
  its inputs alike).

Each loop returns ``(sequences, commit_step)``: ``commit_step[b, g]`` is the step at which
response position ``g`` was last written by the loop (-1 when never).
"""

from __future__ import annotations

import torch

from mosa_kernels.random import RANDOM_CONFIDENCE_COLUMN, gumbel, seed_from, uniform

NEG_INF = float("-inf")


def ranked_positions(confidence: torch.Tensor, candidate: torch.Tensor) -> list[list[int]]:
    """Per row, the candidate positions by confidence descending, ties to the lower position."""
    ranked = []
    for conf, cand in zip(confidence.tolist(), candidate.tolist(), strict=True):
        positions = [p for p, ok in enumerate(cand) if ok]
        ranked.append(sorted(positions, key=lambda p, conf=conf: (-conf[p], p)))
    return ranked


def select(
    confidence: torch.Tensor,
    candidate: torch.Tensor,
    k: list[int] | None = None,
    threshold: float | None = None,
    factor: float | None = None,
) -> torch.Tensor:
    """LLaDA top-k / Fast-dLLM threshold / Fast-dLLM factor selection (docs/DESIGN.md §4.2).

    ``threshold`` and ``factor`` compare in float32, as the spec says.
    """
    take = torch.zeros_like(candidate)
    conf32 = confidence.float()
    for b, order in enumerate(ranked_positions(confidence, candidate)):
        for n, p in enumerate(order):  # n: 0-based rank
            if k is not None:
                ok = n < k[b]
            elif threshold is not None:
                ok = n == 0 or conf32[b, p] >= torch.tensor(threshold, dtype=torch.float32)
            else:
                bound = torch.tensor(1.0 - factor / (n + 2), dtype=torch.float32)
                ok = n == 0 or conf32[b, p] >= bound
            take[b, p] = ok
    return take


def llada_num_transfer_tokens(block_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's ``get_num_transfer_tokens``, loop for loop."""
    mask_num = block_masked.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    counts = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        counts[i, : remainder[i]] += 1
    return counts


def window_rows(batch: int, first: int, end: int, length: int) -> torch.Tensor:
    """``int64[B, L]`` counter row of every position: ``b * W + (p - first)`` in ``[first, end)``."""
    width = end - first
    rows = torch.full((batch, length), -1, dtype=torch.int64)
    rows[:, first:end] = torch.arange(batch)[:, None] * width + torch.arange(width)[None]
    return rows


def noisy_argmax(
    logits: torch.Tensor, temperature: float, seed: int, rows: torch.Tensor
) -> torch.Tensor:
    """``argmax(l / T + gumbel(seed, row, id))``; plain argmax at T = 0 (first id on ties)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    cols = torch.arange(logits.shape[-1])
    noise = gumbel(seed, rows.clamp(min=0)[..., None], cols)
    return (logits.double() / temperature + noise).argmax(dim=-1)


@torch.no_grad()
def llada_reference(
    model,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    steps: int,
    gen_length: int,
    block_length: int,
    mask_id: int,
    eos_id: int,
    eot_id: int,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    threshold: float | None = None,
    factor: float | None = None,
    generator: torch.Generator | None = None,
    response: torch.Tensor | None = None,
    block_ends: list[torch.Tensor] | None = None,
    cache: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """LLaDA's published ``generate`` (docs/DESIGN.md §6), for any model whose forward gives ``.logits``.

    With ``threshold``/``factor``, each block instead runs until none of its candidates is
    masked ("blocks run until filled"), committing the positions the rule passes.
    ``cache`` ('prefix' / 'dual', Fast-dLLM; ``model.inner`` must then be a mosa model): the
    first step of a block runs the whole sequence and keeps every layer's keys/values; later
    steps run ``[w, L)`` ('prefix') or ``[w, end)`` ('dual') against them, ``w`` the window start.
    Returns ``(sequences, commit_step, number of steps run)``; ``block_ends`` (a list), when
    given, receives a copy of the canvas at the end of every block.
    """
    batch, prompt_length = prompt.shape
    x = torch.full((batch, prompt_length + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt_length] = prompt
    if response is not None:
        x[:, prompt_length:] = response
    if attention_mask is not None:
        attention_mask = torch.cat(
            [attention_mask, torch.ones(batch, gen_length, dtype=attention_mask.dtype)], dim=1
        )
    # As published: the unconditional copy masks what was not a mask at the start (the prompt,
    # its padding, fixed response tokens), computed once.
    prompt_index = x != mask_id
    length = x.shape[1]
    position = torch.arange(length)
    parallel = threshold is not None or factor is not None
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps_per_block = steps // num_blocks
    commit_step = torch.full((batch, gen_length), -1, dtype=torch.long)
    step = 0
    kv = None

    def logits_of(x_in, mask_in, refresh, first, end):
        nonlocal kv
        if cache is None:
            return model(x_in, attention_mask=mask_in).logits.float()
        inner = model.inner  # the cache API is the mosa model's own
        if refresh:
            out = inner(x_in, mask_in, return_cache=True)
            kv, hidden = out.cache, out.hidden_states
        else:  # rows outside the slice stay zero: they are never candidates
            stop = x_in.shape[1] if cache == "prefix" else end
            hidden = torch.zeros(x_in.shape + (inner.lm_head_weight.shape[1],))
            hidden[:, first:stop] = inner(x_in[:, first:stop], cache=kv, start=first).hidden_states
        return torch.nn.functional.linear(hidden, inner.lm_head_weight, inner.lm_head_bias).float()

    for block in range(num_blocks):
        start = prompt_length + block * block_length
        end = start + block_length
        block_masked = x[:, start:end] == mask_id
        counts = llada_num_transfer_tokens(block_masked, steps_per_block)
        # Counter rows are numbered over [first masked column left of the block (any row), end).
        masked_left = (x[:, :start] == mask_id).any(dim=0).nonzero()
        first = int(masked_left[0]) if masked_left.numel() else start
        rows = window_rows(batch, first, end, length)
        for i in range(4 * length if parallel else steps_per_block):
            mask_index = x == mask_id
            candidate = mask_index & (position < end)
            if parallel and not candidate.any():
                break
            assert i < 4 * length - 1, "the model keeps predicting the mask token"
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                both_masks = None
                if attention_mask is not None:
                    both_masks = torch.cat([attention_mask, attention_mask])
                both = logits_of(torch.cat([x, un_x]), both_masks, i == 0, first, end)
                cond, uncond = both.chunk(2)
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                logits = logits_of(x, attention_mask, i == 0, first, end).clone()
            if logits_eos_inf:
                logits[:, :, eos_id] = NEG_INF

            seed = seed_from(generator) if temperature > 0 or remasking == "random" else 0
            x0 = noisy_argmax(logits, temperature, seed, rows)

            if confidence_eos_eot_inf:
                # logits_with_noise[:, :, EOS] = logits[:, :, EoT] = -inf: at T = 0
                # logits_with_noise *is* logits, so both leave the confidence softmax.
                logits[:, :, eot_id] = NEG_INF
                if temperature == 0:
                    logits[:, :, eos_id] = NEG_INF

            if remasking == "low_confidence":
                p = torch.softmax(logits.double(), dim=-1)
                x0_p = p.gather(-1, x0[..., None])[..., 0]
            elif remasking == "random":
                x0_p = uniform(seed, rows.clamp(min=0), torch.tensor(RANDOM_CONFIDENCE_COLUMN))
            else:
                raise NotImplementedError(remasking)
            confidence = torch.where(candidate, x0_p, NEG_INF)

            if parallel:
                transfer = select(confidence, candidate, threshold=threshold, factor=factor)
            else:
                transfer = select(confidence, candidate, k=counts[:, i].tolist())
            x[transfer] = x0[transfer]
            commit_step[transfer[:, prompt_length:]] = step
            step += 1
        if block_ends is not None:
            block_ends.append(x.clone())
    return x, commit_step, step


def shifted(logits: torch.Tensor) -> torch.Tensor:
    """Dream's ``torch.cat([logits[:, :1], logits[:, :-1]], dim=1)``."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def top_p_logits(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative_probs = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    sorted_indices_to_remove = cumulative_probs > top_p
    sorted_indices_to_remove[..., 1:] = sorted_indices_to_remove[..., :-1].clone()
    sorted_indices_to_remove[..., 0] = 0
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask = mask.scatter_(-1, sorted_indices, sorted_indices_to_remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def top_k_logits(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    top_k = min(top_k, logits.size(-1))
    indices_to_remove = logits < torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(indices_to_remove, torch.finfo(logits.dtype).min)


def dream_sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float | None,
    top_k: int | None,
    alg: str,
    seed: int,
    rows: torch.Tensor,
    dream_entropy_epsilon: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's ``sample_tokens`` on ``[N, V]`` logits (the masked rows), confidence in float64."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_logits(logits, top_p)
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    probs = torch.softmax(logits.double(), dim=-1)
    if temperature > 0:  # Categorical(probs).sample(), here by Gumbel-max on the filtered logits
        cols = torch.arange(logits.shape[-1])
        x0 = (logits.double() + gumbel(seed, rows[:, None], cols)).argmax(dim=-1)
        confidence = probs.gather(-1, x0[:, None])[:, 0]
    else:
        confidence, x0 = probs.max(dim=-1)
    if alg == "topk_margin":
        sorted_probs = torch.sort(probs, dim=-1, descending=True).values
        confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
    elif alg == "entropy":
        if dream_entropy_epsilon:
            confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
        else:
            confidence = torch.special.xlogy(probs, probs).sum(dim=-1)
    return confidence, x0


@torch.no_grad()
def dream_reference(
    unshifted_model,
    inputs: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    steps: int,
    mask_id: int,
    alg: str = "maskgit_plus",
    eps: float = 1e-3,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    dream_entropy_epsilon: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's ``_sample`` for the confidence algorithms, ``alg_temp`` None.

    ``unshifted_model(x, attention_mask=...)`` returns ``.logits`` as Dream's ``DreamModel``
    does (the head at every position); the shift is applied here, as in ``_sample``.
    """
    assert alg in ("maskgit_plus", "topk_margin", "entropy")
    batch = inputs.shape[0]
    x = torch.nn.functional.pad(inputs, (0, max_new_tokens), value=mask_id)
    if attention_mask is not None and torch.any(attention_mask == 0):
        attention_mask = torch.nn.functional.pad(attention_mask, (0, max_new_tokens), value=1)
    else:
        attention_mask = None
    timesteps = torch.linspace(1, eps, steps + 1)
    prompt_length = inputs.shape[1]
    commit_step = torch.full((batch, max_new_tokens), -1, dtype=torch.long)
    masked_columns = (x == mask_id).any(dim=0).nonzero()
    first = int(masked_columns[0]) if masked_columns.numel() else x.shape[1]
    rows = window_rows(batch, first, x.shape[1], x.shape[1])

    for i in range(steps):
        mask_index = x == mask_id
        logits = shifted(unshifted_model(x, attention_mask=attention_mask).logits.float())
        mask_logits = logits[mask_index]
        t = timesteps[i]
        s = timesteps[i + 1]
        seed = seed_from(generator) if temperature > 0 else 0
        confidence, x0 = dream_sample_tokens(
            mask_logits, temperature, top_p, top_k, alg, seed, rows[mask_index],
            dream_entropy_epsilon,
        )  # fmt: skip
        num_mask_token = mask_index.sum() / mask_index.shape[0]
        number_transfer_tokens = (
            int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
        )
        full_confidence = torch.full(x.shape, NEG_INF, dtype=torch.float64)
        full_confidence[mask_index] = confidence
        if number_transfer_tokens > 0:
            x_ = torch.zeros_like(x) + mask_id
            x_[mask_index] = x0.clone()
            for b, order in enumerate(ranked_positions(full_confidence, mask_index)):
                # Dream takes topk over all columns: when a row has fewer masked positions than
                # the count it writes masks back; the tests only use rows with equal counts.
                assert len(order) >= number_transfer_tokens
                picked = order[:number_transfer_tokens]
                x[b, picked] = x_[b, picked]
                response = [p - prompt_length for p in picked if p >= prompt_length]
                commit_step[b, response] = i
    return x, commit_step


def _block_logits(model, x: torch.Tensor, end: int, block_length: int) -> torch.Tensor:
    """float64 logits of the block ending at ``end``: the whole window ``x[:end]`` run under
    block-causal attention, positions ``0..end-1`` (one sequence, no padding)."""
    out = model(x[None, :end], block_length=block_length, return_logits=True)
    return out.logits[0, end - block_length : end].double()


def _greedy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax token (lowest id on ties) and its float64 softmax probability, per position."""
    probs = torch.softmax(logits, dim=-1)
    token = probs.argmax(dim=-1)
    return token, probs.gather(-1, token[:, None])[:, 0]


def _above(confidence: float, threshold: float) -> bool:
    """The published ``confidence > threshold``, in float32 as the model's probabilities."""
    return bool(torch.tensor(confidence, dtype=torch.float32) > threshold)


def _mask_transfer(masked, token, confidence, start, k, threshold) -> list[int]:
    """LLaDA2's rule: every masked position above ``threshold`` when at least ``k`` are, else
    the ``k`` most confident masked positions (ties to the lower position)."""
    above = [p for p in masked if _above(float(confidence[p - start]), threshold)]
    if len(above) >= k:
        return above
    ranked = sorted(masked, key=lambda p: (-float(confidence[p - start]), p))
    return ranked[: min(k, len(masked))]


def _cut_at_eos(x, trace, first: int, stop: int, eos_id: int):
    """``x[first:stop]`` (and its trace) up to and including the first EOS."""
    response = x[first:stop]
    eos = (response == eos_id).nonzero()
    keep = int(eos[0]) + 1 if eos.numel() else response.numel()
    return response[:keep], trace[first : first + keep]


def _block_canvas(prompt, gen_length, block_length, mask_id, response):
    """The published canvas (whole blocks from position 0: the prompt, then masks) with
    ``response``'s fixed tokens at their positions; ``(x, trace, fixed positions)``."""
    prompt_length = prompt.numel()
    num_blocks = -(-(prompt_length + gen_length) // block_length)
    x = torch.full((num_blocks * block_length,), mask_id, dtype=torch.long)
    x[:prompt_length] = prompt
    fixed = set()
    if response is not None:
        x[prompt_length : prompt_length + gen_length] = response
        fixed = {prompt_length + g for g in (response != mask_id).nonzero()[:, 0].tolist()}
    return x, torch.full_like(x, -1), fixed


@torch.no_grad()
def llada2_reference(
    model,
    prompt: torch.Tensor,
    *,
    gen_length: int,
    block_length: int,
    steps: int,
    threshold: float,
    mask_id: int,
    eos_id: int,
    minimal_topk: int = 1,
    eos_early_stop: bool = False,
    response: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA2.0's published ``generate`` at temperature 0 for one prompt ``int[P]``.

    Returns ``(response, trace)``: the response up to and including its first EOS (as
    published), and the step each of its positions was last written at (-1: never).
    ``model(x, block_length=..., return_logits=True)`` gives block-causal logits.
    ``response`` (``int[G]``, mosa's extension): its ids other than ``mask_id`` are written
    into the canvas before decoding, as committed tokens (no candidates, never written).
    """
    steps = min(steps, gen_length // minimal_topk)
    prompt_length = prompt.numel()
    x, trace, _ = _block_canvas(prompt, gen_length, block_length, mask_id, response)
    num_blocks = x.numel() // block_length
    counts = [block_length // steps + (i < block_length % steps) for i in range(steps)]
    step = 0
    for block in range(prompt_length // block_length, num_blocks):
        start, end = block * block_length, (block + 1) * block_length
        for i in range(steps):
            masked = [p for p in range(start, end) if x[p] == mask_id]
            if not masked:
                break
            token, confidence = _greedy(_block_logits(model, x, end, block_length))
            chosen = _mask_transfer(masked, token, confidence, start, counts[i], threshold)
            for p in chosen:
                x[p] = token[p - start]
                trace[p] = step if token[p - start] != mask_id else -1
            step += 1
            if eos_early_stop and any(int(token[p - start]) == eos_id for p in chosen):
                eos = (x == eos_id).nonzero()  # searched from position 0, prompt included
                if eos.numel():
                    first_eos = int(eos[0])
                    if (x[prompt_length:first_eos] != mask_id).all():
                        kept = slice(prompt_length, first_eos + 1)  # empty: EOS in the prompt
                        return x[kept], trace[kept]
        if (x[prompt_length:end] == eos_id).any():
            break
    return _cut_at_eos(x, trace, prompt_length, prompt_length + gen_length, eos_id)


@torch.no_grad()
def llada21_reference(
    model,
    prompt: torch.Tensor,
    *,
    gen_length: int,
    block_length: int,
    threshold: float,
    editing_threshold: float,
    mask_id: int,
    eos_id: int,
    max_post_steps: int = 16,
    num_to_transfer: int = 1,
    eos_early_stop: bool = False,
    response: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA2.1's published ``generate`` (token editing) at temperature 0 for one prompt;
    returns as ``llada2_reference`` (``response``'s fixed tokens are never edited either)."""
    prompt_length = prompt.numel()
    x, trace, fixed = _block_canvas(prompt, gen_length, block_length, mask_id, response)
    num_blocks = x.numel() // block_length
    step = 0
    for block in range(prompt_length // block_length, num_blocks):
        start, end = block * block_length, (block + 1) * block_length
        post_steps = 0
        while True:
            old = x[start:end].clone()
            masked = [p for p in range(start, end) if x[p] == mask_id]
            if not masked:
                post_steps += 1
            if post_steps > max_post_steps:
                break
            token, confidence = _greedy(_block_logits(model, x, end, block_length))
            chosen = _mask_transfer(masked, token, confidence, start, num_to_transfer, threshold)
            edited = [
                p
                for p in range(max(start, prompt_length), end)
                if p not in masked
                and p not in fixed
                and _above(float(confidence[p - start]), editing_threshold)
                and token[p - start] != old[p - start]
            ]
            for p in chosen + edited:
                x[p] = token[p - start]
                trace[p] = step if token[p - start] != mask_id else -1
            step += 1
            if not masked and not edited:
                break
        if eos_early_stop:
            response = x[prompt_length:end]
            if not (response == mask_id).any() and (response == eos_id).any():
                break
    return _cut_at_eos(x, trace, prompt_length, prompt_length + gen_length, eos_id)

"""``diffusion_generate``: Dream's sampling algorithms with its argument names."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mosa.text.canvas import build_canvas, first_masked_position
from mosa_kernels import sample_tokens, select_transfer
from mosa_kernels.random import gumbel, seed_from

from .filters import top_k_filter, top_p_filter
from .output import GenerateOutput, record_commits
from .predictor import Predictor, model_token_id
from .schedule import dream_timesteps, dream_transfer_count

DREAM_MASK_ID = 151666
ALGORITHMS = {
    "origin": None,
    "maskgit_plus": "prob",
    "topk_margin": "margin",
    "entropy": "neg_entropy",
}


@torch.no_grad()
def diffusion_generate(
    model,
    inputs: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
    steps: int = 512,
    eps: float = 1e-3,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    alg: str = "origin",
    alg_temp: float | None = None,
    mask_token_id: int | None = None,
    output_history: bool = False,
    return_dict_in_generate: bool = False,
    generator: torch.Generator | None = None,
    response: torch.Tensor | None = None,
) -> torch.Tensor | GenerateOutput:
    """Sample as Dream's ``model.diffusion_generate`` does (one block, Dream's schedule).

    Each step ``i`` of ``steps`` moves from time ``t = linspace(1, eps, steps + 1)[i]`` to
    ``s = [i + 1]``. ``alg='origin'``: every masked position is decoded with probability
    ``1 - s/t``. The confidence algorithms (``'maskgit_plus'``: probability of the token,
    ``'topk_margin'``: top-1 minus top-2, ``'entropy'``: sum p log p, all from the tempered
    distribution) decode the ``int(n (1 - s/t))`` most confident masked positions, ``n`` the
    masked count averaged over the batch (everything left on the last step); ``alg_temp > 0``
    draws those positions from ``softmax(confidence / alg_temp)`` instead. ``top_p`` /
    ``top_k`` filter the tempered logits first. Logits are shifted as in Dream (token i from
    position i - 1); for a generic ``.logits`` model the shift is applied here.

    Differences from Dream's code, all in edge cases: confidence ties go to the lower
    position; a row never commits more positions than it has masked (Dream would write mask
    tokens over committed ones); the entropy confidence is sum p log p exactly (Dream adds
    1e-10 inside the log). Random draws come from ``generator`` through counter-based noise,
    so they match Dream's in distribution, not bit for bit.

    Returns ``int64[B, P + G]``, or a ``GenerateOutput`` (with ``history`` when
    ``output_history``) when ``return_dict_in_generate``.
    """
    if alg not in ALGORITHMS:
        raise ValueError(f"alg must be one of {tuple(ALGORITHMS)}, got {alg!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a tensor of token ids, got {type(inputs).__name__}")
    prompt = inputs if inputs.dim() == 2 else inputs[None]
    if max_new_tokens is None:
        if max_length is None:
            raise ValueError("give max_new_tokens (or max_length, prompt included)")
        if max_length <= prompt.shape[1]:
            raise ValueError(
                f"max_length ({max_length}) must exceed the prompt length ({prompt.shape[1]}); "
                "or give max_new_tokens"
            )
        max_new_tokens = max_length - prompt.shape[1]
    mask_id = (
        model_token_id(model, "mask_token_id", DREAM_MASK_ID)
        if mask_token_id is None
        else mask_token_id
    )
    canvas = build_canvas(prompt, attention_mask, max_new_tokens, mask_id, response)
    predictor = Predictor(model, mask_id=mask_id, cfg_scale=0.0, cache=None, shift_logits=True)
    x, prompt_length = canvas.x, canvas.prompt_length
    given = x != mask_id
    start, end = first_masked_position(x, mask_id, default=x.shape[1]), x.shape[1]
    timesteps = dream_timesteps(steps, eps)
    commit_step = torch.full((x.shape[0], max_new_tokens), -1, dtype=torch.long, device=x.device)
    history = [] if output_history else None
    filtered = top_p is not None and top_p < 1 or top_k is not None

    for i in range(steps):
        is_masked = x[:, start:end] == mask_id
        rows, _ = predictor.rows(x, canvas.attention_mask, given, start, end, refresh=True)
        if filtered:
            rows = _filtered_logits(rows, predictor, temperature, top_p, top_k)
            head, bias, sample_temperature = None, None, (1.0 if temperature > 0 else 0.0)
        else:
            head, bias, sample_temperature = predictor.weight, predictor.bias, temperature
        seed = seed_from(generator) if sample_temperature > 0 else 0
        if alg == "origin":
            token, _ = sample_tokens(
                rows, head, bias=bias, temperature=sample_temperature, seed=seed
            )
            p_transfer = 1 - float(timesteps[i + 1] / timesteps[i]) if i < steps - 1 else 1.0
            draws = torch.rand(is_masked.shape, generator=generator).to(x.device)
            commit = is_masked & (draws < p_transfer)
        else:
            token, conf = sample_tokens(
                rows, head, bias=bias, temperature=sample_temperature, confidence=ALGORITHMS[alg],
                tempered_confidence=True, seed=seed,
            )  # fmt: skip
            count = dream_transfer_count(x == mask_id, timesteps, i)
            if count <= 0:
                commit = torch.zeros_like(is_masked)
            elif alg_temp:
                # Gumbel-top-k: `count` masked positions drawn without replacement from
                # softmax(confidence / alg_temp), as Dream's torch.multinomial does.
                rows_index = torch.arange(conf.shape[0], device=conf.device)[:, None]
                cols_index = torch.arange(conf.shape[1], device=conf.device)[None]
                noise = gumbel(seed_from(generator), rows_index, cols_index)
                commit = select_transfer((conf / alg_temp + noise).float(), is_masked, k=count)
            else:
                commit = select_transfer(conf, is_masked, k=count)
        x[:, start:end] = torch.where(commit, token, x[:, start:end])
        record_commits(commit_step, commit, token, mask_id, start, prompt_length, i)
        if history is not None:
            history.append(x.clone())

    if not return_dict_in_generate:
        return x
    return GenerateOutput(sequences=x, commit_step=commit_step, steps=steps, history=history)


def _filtered_logits(rows, predictor, temperature, top_p, top_k):
    if predictor.weight is None:
        logits = rows.float()
    else:
        logits = F.linear(rows, predictor.weight, predictor.bias).float()
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    return logits

"""``diffusion_generate``: Dream's sampling algorithms with its argument names."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mosa.models import adopt_model
from mosa.text.canvas import Canvas, build_canvas, first_masked_position
from mosa_kernels import sample_tokens
from mosa_kernels.ops._checks import check_nonnegative
from mosa_kernels.ops.select_transfer import select_scheduled
from mosa_kernels.random import check_generator, gumbel, seed_from

from .arguments import check_mask_id, check_sampler_arguments
from .buckets import bucket_canvas, bucket_pad_id
from .context_window import fit_prompt
from .cuda_graph import GraphedStep, use_cuda_graphs
from .filters import top_k_filter, top_p_filter
from .graph_sets import run_graphed, tensor_memory
from .nonfinite import keep_masked_where_nonfinite, raise_on_nonfinite
from .output import GenerateOutput, record_commits
from .predictor import Predictor, model_token_id
from .schedule import dream_timesteps, dream_transfer_count
from .settings import DREAM_REFERENCE

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
    steps: int = DREAM_REFERENCE.steps,
    eps: float = DREAM_REFERENCE.eps,
    temperature: float = DREAM_REFERENCE.temperature,
    top_p: float | None = None,
    top_k: int | None = None,
    alg: str = DREAM_REFERENCE.alg,
    alg_temp: float | None = None,
    mask_token_id: int | None = None,
    output_history: bool = False,
    return_dict_in_generate: bool = False,
    generator: torch.Generator | None = None,
    response: torch.Tensor | None = None,
    truncate: str | None = None,
    cuda_graphs: bool | str = "auto",
    prompt_bucket: int = 16,
    fill_prompt_masks: bool = False,
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
    position i - 1); for a generic ``.logits`` model the shift is applied here. A LLaDA / Dream
    model loaded with transformers runs the fused path, adopted by ``mosa.from_hf``.

    Differences from Dream's code, all in edge cases: confidence ties go to the lower
    position; a row never commits more positions than it has masked (Dream would write mask
    tokens over committed ones); the entropy confidence is sum p log p exactly (Dream adds
    1e-10 inside the log). Random draws come from ``generator`` through counter-based noise,
    so they match Dream's in distribution, not bit for bit.

    ``cuda_graphs`` and ``prompt_bucket`` are ``generate``'s: by default ("auto"), on CUDA
    with a ``mosa`` model, temperature 0 and a confidence algorithm without ``alg_temp`` or
    filters, outside autocast, the step (the same shape every step) is captured once as a CUDA
    graph and replayed, also by later calls of the same shape; a failed capture falls back
    to the eager loop as in ``generate``.

    A prompt that with ``max_new_tokens`` exceeds the model's ``max_position_embeddings`` is
    refused (ValueError), or with ``truncate='left'`` cut to its last tokens, with a warning
    (the result then holds the kept prompt tokens only).

    A prompt holding the mask id is refused (ValueError; fixed tokens go in ``response``)
    unless ``fill_prompt_masks``, which fills those positions too.

    Returns ``int64[B, P + G]``, or a ``GenerateOutput`` (with ``history`` when
    ``output_history``) when ``return_dict_in_generate``.
    """
    model = adopt_model(model)
    if alg not in ALGORITHMS:
        raise ValueError(f"alg must be one of {tuple(ALGORITHMS)}, got {alg!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    check_nonnegative("temperature", temperature)
    if alg_temp is not None:
        check_nonnegative("alg_temp", alg_temp, " (None or 0: take the most confident)")
    check_generator(generator)
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if isinstance(prompt_bucket, bool) or not isinstance(prompt_bucket, int) or prompt_bucket < 1:
        raise ValueError(f"prompt_bucket must be a positive int, got {prompt_bucket!r}")
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a tensor of token ids, got {type(inputs).__name__}")
    check_sampler_arguments(model, inputs, steps)
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
    check_mask_id(model, mask_id, "mask_token_id")
    prompt, attention_mask = fit_prompt(model, prompt, attention_mask, max_new_tokens, truncate)
    canvas = build_canvas(
        prompt, attention_mask, max_new_tokens, mask_id, response, fill_prompt_masks
    )
    filtered = top_p is not None and top_p < 1 or top_k is not None
    graphs = use_cuda_graphs(cuda_graphs, device=canvas.x.device, model=model, unmet={
        "temperature must be 0": temperature != 0,
        "alg must be a confidence algorithm ('origin' draws random numbers)": alg == "origin",
        "alg_temp must be 0 or None": bool(alg_temp),
        "top_p and top_k must be unset": filtered,
        "output_history must be False": output_history,
    })  # fmt: skip
    if graphs:
        bucketed, added = bucket_canvas(canvas, prompt_bucket, bucket_pad_id(model, mask_id))
        out = _graphed_generation(model, cuda_graphs, bucketed, mask_id, steps, eps, alg)
        if out is not None:  # None: the graph path failed and "auto" falls back to eager
            out.sequences = out.sequences[:, added:]
            return out if return_dict_in_generate else out.sequences
    # Eager: the step the graph path captures, over the caller's canvas, with the options a
    # graph cannot replay.
    step = _dream_step(
        model, canvas, mask_id, steps, eps, alg, temperature=temperature, alg_temp=alg_temp,
        top_p=top_p if filtered else None, top_k=top_k if filtered else None,
        generator=generator,
    )  # fmt: skip
    history = [] if output_history else None
    for _ in range(steps):
        step()
        if history is not None:
            history.append(step.canvas.x.clone())
    raise_on_nonfinite(step.nonfinite)

    x = step.canvas.x
    if not return_dict_in_generate:
        return x
    return GenerateOutput(sequences=x, commit_step=step.trace, steps=steps, history=history)


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


@dataclass
class _DreamStep:
    """One step of ``diffusion_generate``, in place on tensors that stay put; the step number
    is read from the 0-d tensor ``step``. One window ``[start, L)``, the head on all of it.

    The graph path captures this step with a confidence algorithm at temperature 0 and no
    ``alg_temp`` or filter: then it reads nothing on the host (``dream_transfer_count`` on
    the device) and draws no noise. The eager loop calls the same step with the options a
    graph cannot replay, which keep branches of their own: ``'origin'`` (per-position
    Bernoulli draws from ``generator`` with ``1 - s/t`` read on the host), ``top_p`` /
    ``top_k`` (full logits, filtered before sampling), ``alg_temp`` (Gumbel-top-k choice)
    and ``temperature > 0`` (noise seeded per step from ``generator``).
    """

    predictor: Predictor
    canvas: Canvas
    given: torch.Tensor
    trace: torch.Tensor
    step: torch.Tensor
    timesteps: torch.Tensor
    start: int
    alg: str
    mask_id: int
    nonfinite: torch.Tensor
    temperature: float
    alg_temp: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    generator: torch.Generator | None = None

    def __call__(self) -> None:
        x, start = self.canvas.x, self.start
        is_masked = x[:, start:] == self.mask_id
        rows, _ = self.predictor.rows(
            x, self.canvas.attention_mask, self.given, start, x.shape[1] - start, refresh=True
        )
        if self.top_p is not None or self.top_k is not None:
            rows = _filtered_logits(rows, self.predictor, self.temperature, self.top_p, self.top_k)
            head, bias = None, None
            temperature = 1.0 if self.temperature > 0 else 0.0  # the logits are tempered
        else:
            head, bias, temperature = self.predictor.weight, self.predictor.bias, self.temperature
        seed = seed_from(self.generator) if temperature > 0 else 0
        if self.alg == "origin":
            token, _ = sample_tokens(
                rows, head, bias=bias, temperature=temperature, seed=seed, nonfinite="mark"
            )
            commit = is_masked & (self._origin_draws(is_masked) < self._origin_probability())
        else:
            token, conf = sample_tokens(
                rows, head, bias=bias, temperature=temperature, confidence=ALGORITHMS[self.alg],
                tempered_confidence=True, seed=seed, nonfinite="mark",
            )  # fmt: skip
            count = dream_transfer_count(x == self.mask_id, self.timesteps, self.step)
            if self.alg_temp:
                # Gumbel-top-k: `count` masked positions drawn without replacement from
                # softmax(confidence / alg_temp), as Dream's torch.multinomial does.
                rows_index = torch.arange(conf.shape[0], device=conf.device)[:, None]
                cols_index = torch.arange(conf.shape[1], device=conf.device)[None]
                noise = gumbel(seed_from(self.generator), rows_index, cols_index)
                conf = (conf / self.alg_temp + noise).float()
            commit = select_scheduled(conf, is_masked, count.expand(x.shape[0]))
        token = keep_masked_where_nonfinite(token, is_masked, self.nonfinite, self.mask_id)
        x[:, start:] = torch.where(commit, token, x[:, start:])
        record_commits(
            self.trace, commit, token, self.mask_id, start, self.canvas.prompt_length, self.step
        )
        self.step += 1

    def _origin_probability(self) -> float:
        """``'origin'``'s chance of decoding a masked position: ``1 - s/t`` (1 on the last
        step), computed on the CPU as Dream does."""
        i = int(self.step)
        if i == self.timesteps.numel() - 2:
            return 1.0
        t, s = self.timesteps[i : i + 2].cpu()
        return 1 - float(s / t)

    def _origin_draws(self, is_masked: torch.Tensor) -> torch.Tensor:
        return torch.rand(is_masked.shape, generator=self.generator).to(is_masked.device)


def _dream_step(model, canvas: Canvas, mask_id, steps, eps, alg, **options) -> _DreamStep:
    """A step over ``canvas`` (written in place) from the first masked position on, its
    trace all -1 and its count 0; ``options``: ``_DreamStep``'s eager-only fields."""
    x = canvas.x
    return _DreamStep(
        predictor=Predictor(model, mask_id=mask_id, cfg_scale=0.0, cache=None, shift_logits=True),
        canvas=canvas,
        given=x != mask_id,
        trace=torch.full(
            (x.shape[0], x.shape[1] - canvas.prompt_length), -1, dtype=torch.long, device=x.device
        ),
        step=torch.zeros((), dtype=torch.long, device=x.device),
        # Made on the CPU as Dream makes them, then moved, so every path truncates alike.
        timesteps=dream_timesteps(steps, eps).to(x.device),
        start=first_masked_position(x, mask_id, default=x.shape[1]),
        alg=alg,
        mask_id=mask_id,
        nonfinite=torch.zeros(x.shape[0], dtype=torch.bool, device=x.device),
        **options,
    )


class _GraphedSteps:
    """A ``_DreamStep`` (a confidence algorithm, temperature 0, no ``alg_temp`` or filter)
    over tensors of one shape, run eagerly once (which compiles its
    kernels), then captured and replayed (``GraphedStep``), by this and by later calls of the
    same shape."""

    def __init__(self, step: _DreamStep, cache):
        self.step = step
        self.device = step.canvas.x.device
        self.graphed = GraphedStep(step, self.device, torch.cuda.graph_pool_handle(), cache)

    def memory(self) -> dict:
        """What the set holds (see ``GraphCache``): its tensors and graph pool."""
        step = self.step
        memory = tensor_memory([
            step.canvas.x, step.canvas.attention_mask, step.given, step.trace, step.step,
            step.timesteps,
        ])  # fmt: skip
        memory[("pool", id(self))] = self.graphed.pool_bytes
        return memory

    def load(self, canvas: Canvas, mask_id: int) -> None:
        state = self.step
        state.canvas.x.copy_(canvas.x)
        if canvas.attention_mask is not None:
            state.canvas.attention_mask.copy_(canvas.attention_mask)
        state.given.copy_(canvas.x != mask_id)
        state.trace.fill_(-1)
        state.step.zero_()
        state.nonfinite.zero_()


def _graphed_generation(model, requested, canvas: Canvas, mask_id, steps, eps, alg):
    """The graph path (``run_graphed``); None when it failed and "auto" runs eagerly."""
    x = canvas.x
    start = first_masked_position(x, mask_id, default=x.shape[1])
    padded = canvas.attention_mask is not None
    key = (
        "dream", mask_id, steps, eps, alg, tuple(x.shape), start, canvas.prompt_length, padded,
    )  # fmt: skip

    def make(cache) -> _GraphedSteps:
        mask = None if not padded else canvas.attention_mask.clone()
        own = Canvas(x.clone(), mask, canvas.prompt_length)
        # The graph path runs greedy decoding only (``use_cuda_graphs``' conditions).
        step = _dream_step(model, own, mask_id, steps, eps, alg, temperature=0.0)
        return _GraphedSteps(step, cache)

    def run(graphed: _GraphedSteps) -> GenerateOutput:
        graphed.load(canvas, mask_id)
        for _ in range(steps):
            graphed.graphed()
        state = graphed.step
        raise_on_nonfinite(state.nonfinite)
        return GenerateOutput(
            sequences=state.canvas.x.clone(), commit_step=state.trace.clone(), steps=steps
        )

    return run_graphed(model, requested, key, make, run)

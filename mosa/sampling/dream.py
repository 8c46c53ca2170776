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
        out = _graphed_generation(
            model, cuda_graphs, bucketed, mask_id, steps, eps, ALGORITHMS[alg]
        )
        if out is not None:  # None: the graph path failed and "auto" falls back to eager
            out.sequences = out.sequences[:, added:]
            return out if return_dict_in_generate else out.sequences
    predictor = Predictor(model, mask_id=mask_id, cfg_scale=0.0, cache=None, shift_logits=True)
    x, prompt_length = canvas.x, canvas.prompt_length
    given = x != mask_id
    start, end = first_masked_position(x, mask_id, default=x.shape[1]), x.shape[1]
    timesteps = dream_timesteps(steps, eps)
    commit_step = torch.full((x.shape[0], max_new_tokens), -1, dtype=torch.long, device=x.device)
    history = [] if output_history else None
    nonfinite = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    for i in range(steps):
        is_masked = x[:, start:end] == mask_id
        rows, _ = predictor.rows(x, canvas.attention_mask, given, start, end - start, refresh=True)
        if filtered:
            rows = _filtered_logits(rows, predictor, temperature, top_p, top_k)
            head, bias, sample_temperature = None, None, (1.0 if temperature > 0 else 0.0)
        else:
            head, bias, sample_temperature = predictor.weight, predictor.bias, temperature
        seed = seed_from(generator) if sample_temperature > 0 else 0
        if alg == "origin":
            token, _ = sample_tokens(
                rows, head, bias=bias, temperature=sample_temperature, seed=seed,
                nonfinite="mark",
            )  # fmt: skip
            p_transfer = 1 - float(timesteps[i + 1] / timesteps[i]) if i < steps - 1 else 1.0
            draws = torch.rand(is_masked.shape, generator=generator).to(x.device)
            commit = is_masked & (draws < p_transfer)
        else:
            token, conf = sample_tokens(
                rows, head, bias=bias, temperature=sample_temperature, confidence=ALGORITHMS[alg],
                tempered_confidence=True, seed=seed, nonfinite="mark",
            )  # fmt: skip
            count = dream_transfer_count(x == mask_id, timesteps, i).expand(x.shape[0])
            if alg_temp:
                # Gumbel-top-k: `count` masked positions drawn without replacement from
                # softmax(confidence / alg_temp), as Dream's torch.multinomial does.
                rows_index = torch.arange(conf.shape[0], device=conf.device)[:, None]
                cols_index = torch.arange(conf.shape[1], device=conf.device)[None]
                noise = gumbel(seed_from(generator), rows_index, cols_index)
                commit = select_scheduled((conf / alg_temp + noise).float(), is_masked, count)
            else:
                commit = select_scheduled(conf, is_masked, count)
        token = keep_masked_where_nonfinite(token, is_masked, nonfinite, mask_id)
        x[:, start:end] = torch.where(commit, token, x[:, start:end])
        record_commits(commit_step, commit, token, mask_id, start, prompt_length, i)
        if history is not None:
            history.append(x.clone())
    raise_on_nonfinite(nonfinite)

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


@dataclass
class _ConfidenceStep:
    """One step of a confidence algorithm at temperature 0, in place on tensors that stay put
    (what a CUDA graph replays); the step number is read from the 0-d tensor ``step``.

    The same arithmetic as ``diffusion_generate``'s eager loop: one window ``[start, L)``,
    the head on all of it, ``dream_transfer_count`` on the device.
    """

    predictor: Predictor
    canvas: Canvas
    given: torch.Tensor
    trace: torch.Tensor
    step: torch.Tensor
    timesteps: torch.Tensor
    start: int
    confidence: str
    mask_id: int
    nonfinite: torch.Tensor

    def __call__(self) -> None:
        x, start = self.canvas.x, self.start
        is_masked = x[:, start:] == self.mask_id
        rows, _ = self.predictor.rows(
            x, self.canvas.attention_mask, self.given, start, x.shape[1] - start, refresh=True
        )
        token, conf = sample_tokens(
            rows, self.predictor.weight, bias=self.predictor.bias, confidence=self.confidence,
            tempered_confidence=True, nonfinite="mark",
        )  # fmt: skip
        count = dream_transfer_count(x == self.mask_id, self.timesteps, self.step)
        commit = select_scheduled(conf, is_masked, count.expand(x.shape[0]))
        token = keep_masked_where_nonfinite(token, is_masked, self.nonfinite, self.mask_id)
        x[:, start:] = torch.where(commit, token, x[:, start:])
        record_commits(
            self.trace, commit, token, self.mask_id, start, self.canvas.prompt_length, self.step
        )
        self.step += 1


class _GraphedSteps:
    """A ``_ConfidenceStep`` over tensors of one shape, run eagerly once (which compiles its
    kernels), then captured and replayed (``GraphedStep``), by this and by later calls of the
    same shape."""

    def __init__(self, step: _ConfidenceStep, cache):
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


def _graphed_generation(
    model, requested, canvas: Canvas, mask_id, steps, eps, confidence
) -> GenerateOutput | None:
    """The graph path (``run_graphed``); None when it failed and "auto" runs eagerly."""
    x = canvas.x
    start = first_masked_position(x, mask_id, default=x.shape[1])
    padded = canvas.attention_mask is not None
    key = (
        "dream", mask_id, steps, eps, confidence, tuple(x.shape), start, canvas.prompt_length,
        padded,
    )  # fmt: skip

    def make(cache) -> _GraphedSteps:
        predictor = Predictor(model, mask_id=mask_id, cfg_scale=0.0, cache=None, shift_logits=True)
        return _GraphedSteps(
            _ConfidenceStep(
                predictor=predictor,
                canvas=Canvas(
                    x.clone(),
                    None if not padded else canvas.attention_mask.clone(),
                    canvas.prompt_length,
                ),
                given=torch.empty_like(x, dtype=torch.bool),
                trace=torch.empty(
                    x.shape[0], x.shape[1] - canvas.prompt_length, dtype=torch.long, device=x.device
                ),
                step=torch.zeros((), dtype=torch.long, device=x.device),
                # Made on the CPU as the eager loop makes them, so both truncate alike.
                timesteps=dream_timesteps(steps, eps).to(x.device),
                start=start,
                confidence=confidence,
                mask_id=mask_id,
                nonfinite=torch.zeros(x.shape[0], dtype=torch.bool, device=x.device),
            ),
            cache,
        )

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

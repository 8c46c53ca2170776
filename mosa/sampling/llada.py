"""``generate``: LLaDA's reference sampler, token for token, plus the fast modes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mosa.models import DiffusionLM
from mosa.text.canvas import build_canvas, first_masked_position
from mosa_kernels import sample_tokens, select_transfer
from mosa_kernels.random import seed_from

from .cuda_graph import GraphedCall
from .output import GenerateOutput, record_commits
from .predictor import Predictor, model_token_id
from .schedule import llada_transfer_counts

LLADA_MASK_ID = 126336
LLADA_EOS_ID = 126081
LLADA_EOT_ID = 126348
REMASKING = ("low_confidence", "random")


@torch.no_grad()
def generate(
    model,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    steps: int = 128,
    gen_length: int = 128,
    block_length: int = 128,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    mask_id: int | None = None,
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    threshold: float | None = None,
    factor: float | None = None,
    cache: str | None = None,
    stop_at_eos: bool = False,
    generator: torch.Generator | None = None,
    return_trace: bool = False,
    *,
    cuda_graphs: bool = False,
    response: torch.Tensor | None = None,
    eos_id: int | None = None,
    eot_id: int | None = None,
) -> torch.Tensor | GenerateOutput:
    """Sample a response with LLaDA's semi-autoregressive, low-confidence-remasking sampler.

    With the defaults (temperature 0, no cache, no threshold) the result equals LLaDA's
    published ``generate()`` token for token, with two documented differences: confidence
    ties are broken towards the lower position (``torch.topk`` leaves their order
    unspecified), and padding is masked in attention.

    Args:
        model: a ``mosa`` model (fused path: hidden states of the active window only, fused
            LM head and selection) or any model whose forward returns ``.logits``.
        prompt: ``int[B, P]``, left-padded when rows differ (give ``attention_mask``).
        steps, gen_length, block_length: ``gen_length % block_length == 0`` and
            ``steps % (gen_length // block_length) == 0``; each block gets an equal share.
        temperature: 0 for greedy; > 0 samples by Gumbel-max (counter-based noise seeded from
            ``generator``, so runs repeat).
        cfg_scale: classifier-free guidance; the unconditional pass masks the prompt.
        remasking: ``'low_confidence'`` or ``'random'``.
        mask_id: defaults to the model's ``mask_token_id`` (LLaDA's 126336 otherwise).
        logits_eos_inf: EOS never sampled. confidence_eos_eot_inf: LLaDA's quirk — after the
            token is chosen, EoT (and at temperature 0 also EOS) leave the confidence softmax,
            so choosing them gives confidence 0.
        threshold / factor: Fast-dLLM parallel decoding — each step commits every masked
            position of the block whose confidence passes the rule (at least one); blocks run
            until filled and ``steps`` is not used.
        cache: ``None``, ``'prefix'`` or ``'dual'`` (approximate, as in Fast-dLLM): keys and
            values are recomputed for the whole sequence at each block start only.
        stop_at_eos: at block boundaries, a row whose response has a committed EOS with
            nothing masked before it is finished: its masked positions become EOS and it
            leaves the batch.
        generator: CPU ``torch.Generator`` for temperature > 0 and random remasking.
        return_trace: return a ``GenerateOutput`` with the step each position was committed.
        cuda_graphs: replay each block's steps as one CUDA graph, so a step costs the host one
            launch instead of one per kernel (a block's first step, which refreshes the cache,
            and the first step of each new shape, which compiles the kernels, run eagerly).
            Needs CUDA, a ``mosa`` model, temperature 0, low-confidence remasking and neither
            EOS option; the output is the eager one's up to float rounding (the head then runs
            on every position of the window, the block and any masked prompt position left of
            it, instead of the masked ones only). Off by default until
            ``benchmarks/gpu_check.sh`` has confirmed it on a GPU.
        response: optional ``int[G]``/``int[B, G]`` initial response; ids other than
            ``mask_id`` are fixed tokens, never remasked.
        eos_id, eot_id: default to the model config's, else LLaDA's 126081 / 126348.

    Returns the sequences ``int64[B, P + G]`` (prompt included), or a ``GenerateOutput``.
    """
    mask_id = model_token_id(model, "mask_token_id", LLADA_MASK_ID) if mask_id is None else mask_id
    eos_id = model_token_id(model, "eos_token_id", LLADA_EOS_ID) if eos_id is None else eos_id
    eot_id = model_token_id(model, "eot_token_id", LLADA_EOT_ID) if eot_id is None else eot_id
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    for name, value in (("gen_length", gen_length), ("block_length", block_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if gen_length % block_length:
        raise ValueError(
            f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})"
        )
    num_blocks = gen_length // block_length
    if threshold is not None and factor is not None:
        raise ValueError("give threshold or factor, not both")
    parallel = threshold is not None or factor is not None
    if not parallel and (steps < num_blocks or steps % num_blocks):
        raise ValueError(
            f"steps ({steps}) must be a positive multiple of the number of blocks ({num_blocks})"
        )
    graphs = _check_cuda_graphs(
        cuda_graphs, model, prompt, temperature, remasking, logits_eos_inf, confidence_eos_eot_inf
    )
    canvas = build_canvas(prompt, attention_mask, gen_length, mask_id, response)
    predictor = Predictor(
        model, mask_id=mask_id, cfg_scale=cfg_scale, cache=cache, shift_logits=False
    )
    needs_noise = temperature > 0 or remasking == "random"
    sample = functools.partial(
        sample_tokens, weight=predictor.weight, bias=predictor.bias, cfg_scale=cfg_scale,
        temperature=temperature,
        confidence="prob" if remasking == "low_confidence" else "random",
        suppress=[eos_id] if logits_eos_inf else [],
        exclude_from_confidence=(
            ([eos_id, eot_id] if temperature == 0 else [eot_id]) if confidence_eos_eot_inf else []
        ),
    )  # fmt: skip
    check_ids = functools.partial(
        _check_special_ids, logits_eos_inf=logits_eos_inf,
        confidence_eos_eot_inf=confidence_eos_eot_inf, eos_id=eos_id, eot_id=eot_id,
    )  # fmt: skip

    x, prompt_length = canvas.x, canvas.prompt_length
    given = x != mask_id
    batch = x.shape[0]
    steps_per_block = steps // num_blocks
    commit_step = torch.full((batch, gen_length), -1, dtype=torch.long, device=x.device)
    active = torch.arange(batch, device=x.device)
    step_count = torch.zeros((), dtype=torch.long, device=x.device)
    pool = torch.cuda.graph_pool_handle() if graphs else None
    warm_shapes = set()

    for block in range(num_blocks):
        start = prompt_length + block * block_length
        end = start + block_length
        if stop_at_eos and block > 0:
            active = _drop_finished(x, active, prompt_length, start, mask_id, eos_id)
            if active.numel() == 0:
                break
        rows_x = x[active]
        # Positions left of the block stay candidates while masked (prompt masks, or a model
        # that predicted the mask token), as in the reference; one host read per block.
        window = first_masked_position(rows_x[:, :start], mask_id, default=start)
        counts = (
            None
            if parallel
            else llada_transfer_counts(rows_x[:, start:end] == mask_id, steps_per_block)
        )
        step = BlockStep(
            predictor=predictor,
            sample=sample,
            check_ids=check_ids,
            x=rows_x,
            attention_mask=None if canvas.attention_mask is None else canvas.attention_mask[active],
            given=given[active],
            trace=commit_step[active],
            window=window,
            end=end,
            prompt_length=prompt_length,
            mask_id=mask_id,
            rule=(
                {"threshold": threshold, "factor": factor}
                if parallel
                else {"k": torch.empty_like(counts[:, 0])}
            ),
            generator=generator if needs_noise else None,
            count=step_count,
        )
        # The cache is refilled at each block start, so a block's graph is its own.
        graphed = (
            GraphedCall(functools.partial(step, width=None), x.device, pool) if graphs else None
        )
        widest = (
            None
            if parallel or needs_noise or graphs
            else _widest(rows_x, window, end, counts, mask_id)
        )
        # Parallel decoding commits at least one masked position per row and step.
        budget = end - window if parallel else steps_per_block
        for i in range(budget):
            if parallel and not bool((rows_x[:, window:end] == mask_id).any()):
                break
            if not parallel:
                step.rule["k"].copy_(counts[:, i])
            width = None if widest is None else widest[i]
            if i == 0:
                step(refresh=True, width=width)
            elif graphed is None or step.shape not in warm_shapes:
                # With graphs: compiles and tunes, for these shapes, what the graph will run.
                step(width=width)
                warm_shapes.add(step.shape)
            else:
                graphed()
        x[active], commit_step[active] = rows_x, step.trace

    if not return_trace:
        return x
    return GenerateOutput(sequences=x, commit_step=commit_step, steps=int(step_count))


@dataclass
class BlockStep:
    """One denoising step of a block, in place on tensors that stay put for the whole block
    (what lets a CUDA graph replay it).

    ``x`` (the block's rows of the canvas) and ``trace`` (their commit steps) are updated;
    ``rule`` is ``select_transfer``'s: a fixed-schedule step reads its counts from the tensor
    ``rule['k']``, which the caller fills before each step; ``count`` counts the steps run.
    """

    predictor: Predictor
    sample: Callable
    check_ids: Callable[[int], None]
    x: torch.Tensor
    attention_mask: torch.Tensor | None
    given: torch.Tensor
    trace: torch.Tensor
    window: int
    end: int
    prompt_length: int
    mask_id: int
    rule: dict
    generator: torch.Generator | None
    count: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        """Rows, window width and positions run: what the kernels of a step are compiled for."""
        rows, length = self.x.shape
        first, stop = self.predictor.cached_span(self.window, self.end, length)
        return rows, self.end - self.window, stop - first

    def __call__(self, refresh: bool = False, width: int | None = None) -> None:
        """``refresh`` reruns the whole sequence (and refills the cache); ``width``, when
        given, samples each row's first ``width`` masked positions only (see ``_sample_masked``)."""
        window, end = self.window, self.end
        is_masked = self.x[:, window:end] == self.mask_id
        rows, rows_uncond = self.predictor.rows(
            self.x, self.attention_mask, self.given, window, end, refresh=refresh
        )
        if refresh:
            self.check_ids(self.predictor.vocab_size(rows))
        sample = functools.partial(
            self.sample, seed=seed_from(self.generator) if self.generator is not None else 0
        )
        if width is None:
            token, conf = sample(rows, x_uncond=rows_uncond)
        else:
            token, conf = _sample_masked(sample, rows, rows_uncond, is_masked, width)
        commit = select_transfer(conf, is_masked, **self.rule)
        self.x[:, window:end] = torch.where(commit, token, self.x[:, window:end])
        record_commits(
            self.trace, commit, token, self.mask_id, window, self.prompt_length, self.count
        )
        self.count += 1


def _check_cuda_graphs(
    cuda_graphs, model, prompt, temperature, remasking, logits_eos_inf, confidence_eos_eot_inf
) -> bool:
    """Whether to replay steps as CUDA graphs; raises when asked for where they cannot be."""
    if not cuda_graphs:
        return False
    unsupported = {
        "prompt must be on a CUDA device": not (
            isinstance(prompt, torch.Tensor) and prompt.device.type == "cuda"
        ),
        "the model must be a mosa model (mosa.load_model)": not isinstance(model, DiffusionLM),
        "temperature must be 0 (sampling noise is seeded per step)": temperature != 0,
        "remasking must be 'low_confidence'": remasking != "low_confidence",
        "logits_eos_inf and confidence_eos_eot_inf must be False": logits_eos_inf
        or confidence_eos_eot_inf,
    }
    reasons = [reason for reason, failed in unsupported.items() if failed]
    if reasons:
        raise ValueError(f"cuda_graphs=True needs: {'; '.join(reasons)}; or pass cuda_graphs=False")
    return True


def _widest(x, window, end, counts, mask_id) -> list[int]:
    """Before each step of a fixed-schedule block, the most masked positions any row has left
    in ``[window, end)`` (each step commits exactly ``counts``); reads the host once a block."""
    masked = (x[:, window:end] == mask_id).sum(dim=1, keepdim=True)
    left = masked - (counts.cumsum(dim=1) - counts)
    return left.max(dim=0).values.tolist()


def _sample_masked(sample, rows, rows_uncond, is_masked, width: int):
    """``sample`` on each row's masked positions only (committed ones need no logits: the head
    is most of a cached step); unsampled positions get confidence -inf.

    Deterministic choice only: sampling noise is keyed by the row's place in the window."""
    batch, window = is_masked.shape
    token = torch.zeros(batch, window, dtype=torch.long, device=rows.device)
    conf = torch.full((batch, window), float("-inf"), device=rows.device)
    if width == 0:
        return token, conf
    # Masked positions first, in order; rows with fewer take some committed ones as filler.
    places = torch.argsort((~is_masked).to(torch.int8), dim=1, stable=True)[:, :width]

    def take(states):
        return states.gather(1, places[..., None].expand(-1, -1, states.shape[-1]))

    picked_token, picked_conf = sample(
        take(rows), x_uncond=None if rows_uncond is None else take(rows_uncond)
    )
    return token.scatter(1, places, picked_token), conf.scatter(1, places, picked_conf.float())


def _check_special_ids(vocab, logits_eos_inf, confidence_eos_eot_inf, eos_id, eot_id):
    wanted = {"eos_id": eos_id} if logits_eos_inf or confidence_eos_eot_inf else {}
    if confidence_eos_eot_inf:
        wanted["eot_id"] = eot_id
    for name, value in wanted.items():
        if not 0 <= value < vocab:
            raise ValueError(
                f"{name}={value} is outside the model's vocabulary ({vocab}); pass {name} "
                "explicitly (the defaults are LLaDA-8B's ids)"
            )


def _drop_finished(x, active, prompt_length, start, mask_id, eos_id):
    """Fills finished rows with EOS and returns the rows still generating."""
    response = x[active, prompt_length:start]
    is_eos = response == eos_id
    has_eos = is_eos.any(dim=1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), response.shape[1])
    position = torch.arange(response.shape[1], device=x.device)[None]
    masked_before = ((response == mask_id) & (position < first_eos[:, None])).any(dim=1)
    finished = has_eos & ~masked_before
    if bool(finished.any()):
        rows = active[finished]
        tail = x[rows, prompt_length:]
        x[rows, prompt_length:] = torch.where(tail == mask_id, torch.full_like(tail, eos_id), tail)
    return active[~finished]

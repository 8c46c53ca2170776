"""``mosa.block_generate`` against LLaDA2.x's published decoding (docs/DESIGN.md §6).

The reference loops (``reference_loops.llada2_reference`` / ``llada21_reference``) run one
prompt as the published ``generate`` does: the whole window's logits every step, a float64
softmax, an explicit sort. Equality is token for token and step for step (the trace), up to
and including each response's first EOS, which is where the published code cuts.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference_loops import llada2_reference, llada21_reference
from sampling_builders import (
    MASK_ID,
    PAD_ID,
    block_model,
    dream_model,
    generator,
    llada_model,
    padded_prompts,
    random_prompt,
    replay_graphs_eagerly,
)

import mosa
from mosa.sampling import GenerateOutput, block_generate, generate
from mosa.sampling.block_canvas import BlockCanvas
from mosa.text.canvas import build_canvas

EOS_ID = 125  # the tiny configs' (never in a random prompt, so tests pick one the model emits)
BLOCK = importlib.import_module("mosa.sampling.block_generate")


def run(model, ids, mask=None, **kw) -> GenerateOutput:
    kw.setdefault("eos_id", EOS_ID)
    return block_generate(
        model, ids, mask, mask_id=MASK_ID, return_trace=True, cuda_graphs=False, **kw
    )


def emitted_token(model, prompt, position: int, **kw) -> int:
    """The token decoding puts at response ``position`` (decoding does not depend on the EOS
    id until a row stops there, so taking it as EOS makes the row stop at or before it)."""
    kw.pop("eos_early_stop", None)
    out = run(model, prompt[None], stop_at_eos=False, **kw)
    return int(out.sequences[0, prompt.numel() + position])


def emitted_by_some_rows(model, ids, mask, **kw) -> int:
    """A token decoding puts in some rows' responses but not in all (taken as EOS, it stops
    those rows only)."""
    responses = run(model, ids, mask, stop_at_eos=False, **kw).sequences[:, ids.shape[1] :]
    for token in responses.flatten().tolist():
        held = (responses == token).any(dim=1)
        if not held.all():
            return token
    raise AssertionError("every token of the responses is in every row")


def assert_published(out: GenerateOutput, row: int, prompt_width: int, reference, eos_id: int):
    """Row ``row`` of ``out`` is the reference's response up to its cut, EOS after it."""
    tokens, trace = reference
    response = out.sequences[row, prompt_width:]
    kept = min(tokens.numel(), response.numel())  # an early stop may reach past gen_length
    assert torch.equal(response[:kept], tokens[:kept]), f"\n{response}\nreference:\n{tokens}"
    assert torch.equal(out.commit_step[row, :kept], trace[:kept]), (
        f"\n{out.commit_step[row]}\nreference:\n{trace}"
    )
    if kept < response.numel():  # the reference stopped at an EOS (or its prompt's)
        assert kept == 0 or tokens[kept - 1] == eos_id
        assert (response[kept:] == eos_id).all() and (out.commit_step[row, kept:] == -1).all()


# LLaDA2.0 ---------------------------------------------------------------------------------------

# (prompt length, gen_length, block_length, steps, threshold, other options)
LLADA2_SETTINGS = {
    "P5<B16-G20-thr.95": (5, 20, 16, 16, {"threshold": 0.95}),
    "P32=B32-G24-S8-thr.9": (32, 24, 32, 8, {"threshold": 0.9}),
    "P40>B32-G20-thr.95": (40, 20, 32, 32, {"threshold": 0.95}),
    "P21>B16-G27-S5-schedule-only": (21, 27, 16, 5, {"threshold": 2.0}),
    "P9-B8-minimal_topk3": (9, 12, 8, 8, {"threshold": 0.9, "minimal_topk": 3}),
    "P3-B4-S6>B-schedule-only": (3, 10, 4, 6, {"threshold": 2.0}),
}


@pytest.mark.parametrize("cache", [None, "prefix"])
@pytest.mark.parametrize("setting", LLADA2_SETTINGS.values(), ids=LLADA2_SETTINGS.keys())
def test_llada2_matches_the_published_decoding(setting, cache):
    prompt_length, gen_length, block_length, steps, options = setting
    model = block_model()
    prompt = random_prompt(1, prompt_length, seed=prompt_length)[0]
    kw = dict(gen_length=gen_length, block_length=block_length, steps=steps, **options)
    out = run(model, prompt[None], cache=cache, **kw)
    reference = llada2_reference(model, prompt, mask_id=MASK_ID, eos_id=EOS_ID, **kw)
    assert out.sequences.shape == (1, prompt_length + gen_length)
    assert torch.equal(out.sequences[0, :prompt_length], prompt)
    assert_published(out, 0, prompt_length, reference, EOS_ID)


@pytest.mark.parametrize(
    "setting",
    [v for v in LLADA2_SETTINGS.values() if v[4]["threshold"] <= 1],
    ids=[k for k, v in LLADA2_SETTINGS.items() if v[4]["threshold"] <= 1],
)
def test_the_thresholds_commit_in_parallel(setting):
    """The threshold settings above do take the threshold's branch: fewer steps than the
    schedule alone."""
    prompt_length, gen_length, block_length, steps, options = setting
    prompt = random_prompt(1, prompt_length, seed=prompt_length)
    kw = dict(gen_length=gen_length, block_length=block_length, steps=steps, **options)
    parallel = run(block_model(), prompt, **kw)
    scheduled = run(block_model(), prompt, **{**kw, "threshold": 2.0})
    assert parallel.steps < scheduled.steps


@pytest.mark.parametrize("cache", [None, "prefix"])
@pytest.mark.parametrize("early", [False, True], ids=["after-block", "eos_early_stop"])
def test_llada2_stops_at_eos_as_published(cache, early):
    model, prompt = block_model(), random_prompt(1, 6, seed=11)[0]
    kw = dict(gen_length=30, block_length=8, steps=4, threshold=0.8)
    eos_id = emitted_token(model, prompt, 9, **kw)
    out = run(model, prompt[None], cache=cache, eos_id=eos_id, eos_early_stop=early, **kw)
    reference = llada2_reference(
        model, prompt, mask_id=MASK_ID, eos_id=eos_id, eos_early_stop=early, **kw
    )
    assert reference[0].numel() <= 10 and reference[0][-1] == eos_id
    assert_published(out, 0, prompt.numel(), reference, eos_id)


def test_llada2_eos_early_stop_with_eos_in_the_prompt_returns_an_empty_response():
    """The published search for the first EOS starts at the prompt: once a step commits an
    EOS, the response is empty (all EOS here)."""
    model, prompt = block_model(), random_prompt(1, 6, seed=11)[0]
    kw = dict(gen_length=30, block_length=8, steps=4, threshold=0.8)
    # An EOS id both in the prompt and among the tokens decoding commits after it.
    for token in run(model, prompt[None], stop_at_eos=False, **kw).sequences[0, 6:].tolist():
        prompt[2] = token
        if token in run(model, prompt[None], stop_at_eos=False, **kw).sequences[0, 6:]:
            break
    else:
        pytest.fail("no token of the response is decoded again after entering the prompt")
    out = run(model, prompt[None], eos_id=token, eos_early_stop=True, **kw)
    reference = llada2_reference(
        model, prompt, mask_id=MASK_ID, eos_id=token, eos_early_stop=True, **kw
    )
    assert reference[0].numel() == 0
    assert_published(out, 0, prompt.numel(), reference, token)


# LLaDA2.1 (token editing) -----------------------------------------------------------------------

# (prompt length, gen_length, block_length, options)
LLADA21_SETTINGS = {
    "P5-B8-thr.95-edit.9": (5, 20, 8, {"threshold": 0.95, "editing_threshold": 0.9}),
    "P16=B16-edit.5-post3-k2": (
        16,
        21,
        16,
        {"threshold": 0.7, "editing_threshold": 0.5, "max_post_steps": 3, "num_to_transfer": 2},
    ),  # fmt: skip
    "P19-B8-schedule-only-edit.7": (19, 14, 8, {"threshold": 2.0, "editing_threshold": 0.7}),
}


@pytest.mark.parametrize("cache", [None, "prefix"])
@pytest.mark.parametrize("setting", LLADA21_SETTINGS.values(), ids=LLADA21_SETTINGS.keys())
def test_llada21_editing_matches_the_published_decoding(setting, cache):
    prompt_length, gen_length, block_length, options = setting
    model = block_model()
    prompt = random_prompt(1, prompt_length, seed=prompt_length)[0]
    kw = dict(gen_length=gen_length, block_length=block_length, **options)
    out = run(model, prompt[None], cache=cache, **kw)
    reference = llada21_reference(model, prompt, mask_id=MASK_ID, eos_id=EOS_ID, **kw)
    assert_published(out, 0, prompt_length, reference, EOS_ID)


@pytest.mark.parametrize("setting", LLADA21_SETTINGS.values(), ids=LLADA21_SETTINGS.keys())
def test_llada21_settings_do_edit(setting):
    """Each setting above edits tokens: without editing its result differs."""
    prompt_length, gen_length, block_length, options = setting
    prompt = random_prompt(1, prompt_length, seed=prompt_length)
    kw = dict(gen_length=gen_length, block_length=block_length, **options)
    edited = run(block_model(), prompt, **kw).sequences
    kept = run(block_model(), prompt, **{**kw, "editing_threshold": float("inf")}).sequences
    assert not torch.equal(edited, kept)


@pytest.mark.parametrize("early", [False, True], ids=["no-early-stop", "eos_early_stop"])
def test_llada21_stops_at_eos_as_published(early):
    model, prompt = block_model(), random_prompt(1, 6, seed=11)[0]
    kw = dict(gen_length=30, block_length=8, threshold=0.9, editing_threshold=0.9)
    eos_id = emitted_token(model, prompt, 9, **kw)
    out = run(model, prompt[None], eos_id=eos_id, eos_early_stop=early, **kw)
    reference = llada21_reference(
        model, prompt, mask_id=MASK_ID, eos_id=eos_id, eos_early_stop=early, **kw
    )
    assert reference[0][-1] == eos_id
    assert_published(out, 0, prompt.numel(), reference, eos_id)


# The published code itself (skipped unless a local copy is named) -------------------------------

PUBLISHED_ENV = {"llada2": "MOSA_LLADA2_REFERENCE", "llada21": "MOSA_LLADA21_REFERENCE"}
PUBLISHED_RUNNER = Path(__file__).with_name("reference_block_generate.py")


def published_cases(version: str) -> list[tuple[torch.Tensor, dict]]:
    """``(prompt, options)`` for every setting above, and one stopping at an EOS."""
    model, cases = block_model(), []
    if version == "llada2":
        for prompt_length, gen_length, block_length, steps, options in LLADA2_SETTINGS.values():
            prompt = random_prompt(1, prompt_length, seed=prompt_length)[0]
            kw = dict(gen_length=gen_length, block_length=block_length, steps=steps, **options)
            cases.append((prompt, dict(kw, eos_id=EOS_ID)))
        kw = dict(gen_length=30, block_length=8, steps=4, threshold=0.8)
    else:
        for prompt_length, gen_length, block_length, options in LLADA21_SETTINGS.values():
            prompt = random_prompt(1, prompt_length, seed=prompt_length)[0]
            kw = dict(gen_length=gen_length, block_length=block_length, **options)
            cases.append((prompt, dict(kw, eos_id=EOS_ID)))
        kw = dict(gen_length=30, block_length=8, threshold=0.9, editing_threshold=0.9)
    prompt = random_prompt(1, 6, seed=11)[0]
    eos_id = emitted_token(model, prompt, 9, **kw)
    for early in (False, True):
        cases.append((prompt, dict(kw, eos_id=eos_id, eos_early_stop=early)))
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("version", PUBLISHED_ENV)
def test_the_published_generate_gives_the_same_tokens(version, tmp_path):
    """The published ``LLaDA2MoeModelLM.generate`` (LLaDA2.0, or LLaDA2.1's) on the tiny
    checkpoint mosa writes, run in ``MOSA_REFERENCE_PYTHON`` (transformers 4.57), e.g.::

        MOSA_REFERENCE_PYTHON=/work/refenv/bin/python \\
        MOSA_LLADA2_REFERENCE=/tmp/ref/llada2/modeling_llada2_moe.py \\
        MOSA_LLADA21_REFERENCE=/tmp/ref/llada21/modeling_llada21_moe.py \\
            pytest tests/sampling/test_block_generate.py -k published
    """
    modeling_py = os.environ.get(PUBLISHED_ENV[version])
    if not modeling_py:
        pytest.skip(f"set {PUBLISHED_ENV[version]} to a local copy of the published modeling file")
    python = os.environ.get("MOSA_REFERENCE_PYTHON", sys.executable)
    model = block_model()
    model.save_pretrained(tmp_path / "ckpt")
    cases = published_cases(version)
    (tmp_path / "cases.json").write_text(json.dumps([
        {"prompt": prompt.tolist(), "options": dict(options, mask_id=MASK_ID)}
        for prompt, options in cases
    ]))  # fmt: skip
    args = [modeling_py, tmp_path / "ckpt", tmp_path / "cases.json", tmp_path / "out.json"]
    done = subprocess.run(
        [python, str(PUBLISHED_RUNNER), *map(str, args)], capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    published = json.loads((tmp_path / "out.json").read_text())
    for (prompt, options), tokens in zip(cases, published, strict=True):
        response = run(model, prompt[None], **options).sequences[0, prompt.numel() :]
        kept = min(len(tokens), response.numel())
        assert response[:kept].tolist() == tokens[:kept], options
        assert (response[kept:] == options["eos_id"]).all(), options
    print(f"\n{version}: {len(cases)} settings, the published tokens")


# Batches, caching, stopping -----------------------------------------------------------------------

BATCH_SETTINGS = {
    "llada2": dict(gen_length=20, block_length=8, steps=4, threshold=0.9),
    "llada21": dict(gen_length=21, block_length=8, threshold=0.95, editing_threshold=0.9),
}


@pytest.mark.parametrize("cache", [None, "prefix"])
@pytest.mark.parametrize("options", BATCH_SETTINGS.values(), ids=BATCH_SETTINGS.keys())
def test_a_left_padded_batch_decodes_each_row_as_alone(options, cache):
    """Prompt lengths 3..17 with different remainders mod the block: each row is shifted to
    its own block alignment, and some rows need a block more than others."""
    model = block_model()
    lengths = [3, 8, 13, 17, 5]
    ids, mask = padded_prompts(lengths, seed=3)
    width, gen_length = ids.shape[1], options["gen_length"]
    eos_id = emitted_by_some_rows(model, ids, mask, **options)
    out = run(model, ids, mask, cache=cache, eos_id=eos_id, **options)
    assert out.sequences.shape == (len(lengths), width + gen_length)
    assert torch.equal(out.sequences[:, :width], ids)
    stopped = 0
    for row, length in enumerate(lengths):
        alone = run(model, ids[row : row + 1, -length:], cache=cache, eos_id=eos_id, **options)
        assert torch.equal(out.sequences[row, width:], alone.sequences[0, length:]), row
        assert torch.equal(out.commit_step[row], alone.commit_step[0]), row
        stopped += bool((alone.sequences[0, length:] == eos_id).any())
    assert 0 < stopped < len(lengths)  # rows stop on their own


def test_an_unpadded_batch_decodes_each_row_as_alone():
    model, ids = block_model(), random_prompt(3, 11, seed=5)
    kw = dict(gen_length=13, block_length=8, steps=8, threshold=0.9)
    out = run(model, ids, **kw)
    for row in range(ids.shape[0]):
        assert torch.equal(out.sequences[row], run(model, ids[row : row + 1], **kw).sequences[0])


@pytest.mark.parametrize("options", BATCH_SETTINGS.values(), ids=BATCH_SETTINGS.keys())
def test_the_prefix_cache_gives_the_uncached_tokens_and_order(options):
    ids, mask = padded_prompts([4, 9, 15], seed=8)
    cached = run(block_model(), ids, mask, cache="prefix", stop_at_eos=False, **options)
    uncached = run(block_model(), ids, mask, cache=None, stop_at_eos=False, **options)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert torch.equal(cached.commit_step, uncached.commit_step)
    assert cached.steps == uncached.steps


def test_stop_at_eos_cuts_after_the_first_eos_and_saves_steps():
    model, prompt = block_model(), random_prompt(1, 6, seed=11)
    kw = dict(gen_length=30, block_length=8, steps=4, threshold=0.8)
    eos_id = emitted_token(model, prompt[0], 9, **kw)
    full = run(model, prompt, stop_at_eos=False, eos_id=eos_id, **kw)
    stopped = run(model, prompt, eos_id=eos_id, **kw)
    response, decoded = stopped.sequences[0, 6:], full.sequences[0, 6:]
    first = int((decoded == eos_id).nonzero()[0])
    assert first <= 9
    assert torch.equal(response[: first + 1], decoded[: first + 1])
    assert (response[first + 1 :] == eos_id).all()
    assert (stopped.commit_step[0, first + 1 :] == -1).all()
    assert stopped.steps < full.steps


def test_the_default_returns_the_sequences_in_the_input_layout():
    model = block_model()
    ids, mask = padded_prompts([2, 7], seed=4)
    out = block_generate(model, ids, mask, gen_length=9, block_length=8, mask_id=MASK_ID)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    assert out.shape == (2, ids.shape[1] + 9) and torch.equal(out[:, : ids.shape[1]], ids)
    assert not (out == MASK_ID).any()
    assert torch.equal(mosa.block_generate(model, ids[1:, -7:], gen_length=9, block_length=8,
                                           mask_id=MASK_ID)[0, 7:], out[1, ids.shape[1]:])  # fmt: skip


def test_the_aligned_canvas_gives_each_row_its_own_blocks():
    ids, mask = padded_prompts([3, 8, 13], seed=1)
    prompts = build_canvas(ids, mask, 5, MASK_ID)
    canvas = BlockCanvas.lay_out(prompts, 8, MASK_ID, PAD_ID)
    # First decoded blocks 0, 1, 1: row 0 moves right by one block.
    assert canvas.first_block == 1 and canvas.row_start.tolist() == [8, 0, 0]
    assert canvas.response_start.tolist() == [11, 8, 13]
    assert canvas.end_blocks.tolist() == [2, 2, 3] and canvas.x.shape == (3, 24)
    for row, length in enumerate([3, 8, 13]):
        start = int(canvas.row_start[row])
        assert (canvas.x[row, :start] == PAD_ID).all()
        assert torch.equal(canvas.x[row, start : start + length], ids[row, -length:])
        assert (canvas.x[row, start + length :] == MASK_ID).all()
        assert canvas.key_valid[row].tolist() == [i >= start for i in range(24)]
    positions = block_model().rotary_positions(canvas.key_valid, 24)
    assert positions[0, 8:].tolist() == list(range(16))  # a shifted row counts from its start


# Sampling at temperature > 0 ---------------------------------------------------------------------


def test_a_seeded_sampling_run_repeats():
    ids, mask = padded_prompts([4, 9], seed=2)
    kw = dict(gen_length=12, block_length=8, temperature=0.8, top_k=20, top_p=0.9)
    first = run(block_model(), ids, mask, generator=generator(5), **kw).sequences
    again = run(block_model(), ids, mask, generator=generator(5), **kw).sequences
    other = run(block_model(), ids, mask, generator=generator(6), **kw).sequences
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize(
    "filters", [{}, {"top_k": 3}, {"top_p": 0.8}, {"top_k": 5, "top_p": 0.7}], ids=str
)
def test_sampling_draws_from_the_tempered_filtered_distribution(filters):
    """One masked position per row (a 7-token prompt, one response token in an 8-slot
    block), many rows: the drawn tokens follow softmax(logits / T) after top-k then top-p."""
    model, temperature, rows = block_model(), 1.5, 3000
    prompt = random_prompt(1, 7, seed=9)
    logits = model(torch.cat([prompt, torch.tensor([[MASK_ID]])], 1), block_length=8,
                   return_logits=True).logits[0, -1].double() / temperature  # fmt: skip
    if "top_k" in filters:
        logits = logits.masked_fill(logits < logits.topk(filters["top_k"]).values[-1], -torch.inf)
    if "top_p" in filters:
        order = logits.argsort(descending=True)
        before = torch.softmax(logits[order], 0).cumsum(0) - torch.softmax(logits[order], 0)
        logits[order[before > filters["top_p"]]] = -torch.inf  # kept: up to crossing top_p
    expected = torch.softmax(logits, 0)
    out = block_generate(
        model, prompt.expand(rows, -1), gen_length=1, block_length=8, temperature=temperature,
        generator=generator(3), mask_id=MASK_ID, eos_id=EOS_ID, **filters,
    )  # fmt: skip
    counts = torch.bincount(out[:, -1], minlength=expected.numel()).double()
    assert (counts[expected == 0] == 0).all()
    bound = 5 * (expected * (1 - expected) / rows).sqrt() + 2 / rows
    assert ((counts / rows - expected).abs() <= bound).all()


# CUDA graphs (the CPU twin) ----------------------------------------------------------------------


def grouped_experts_on_the_cpu(monkeypatch):
    """The routed experts take their GPU path (grouped GEMMs, no host read) on the CPU too:
    the CPU's per-expert loop reads each expert's token count on the host, which the twin's
    guard would refuse, and a GPU never runs it."""
    from mosa.models import moe as model_moe

    grouped = functools.partial(model_moe.moe_swiglu, path="grouped")
    monkeypatch.setattr(model_moe, "moe_swiglu", grouped)


@pytest.mark.parametrize("cache", [None, "prefix"])
@pytest.mark.parametrize(
    "options",
    [*BATCH_SETTINGS.values(), dict(BATCH_SETTINGS["llada2"], eos_early_stop=True)],
    ids=[*BATCH_SETTINGS, "llada2-eos_early_stop"],
)
def test_cuda_graphs_replay_the_eager_steps(monkeypatch, options, cache):
    twin = replay_graphs_eagerly(monkeypatch)
    grouped_experts_on_the_cpu(monkeypatch)
    model = block_model()
    ids, mask = padded_prompts([3, 8, 13, 17, 5], seed=3)
    eos_id = emitted_token(model, ids[1, -8:], 11, **options)
    kw = dict(mask_id=MASK_ID, eos_id=eos_id, cache=cache, return_trace=True, **options)
    eager = block_generate(model, ids, mask, cuda_graphs=False, **kw)
    graphed = [block_generate(model, ids, mask, cuda_graphs=True, **kw) for _ in range(2)]
    # A shape a call runs once (a block's first step) is warmed up by the first call and
    # captured by the second; from then on the same shape captures nothing.
    captures = twin.captures
    graphed.append(block_generate(model, ids, mask, cuda_graphs=True, **kw))
    assert captures > 0 and twin.captures == captures
    for out in graphed:
        assert torch.equal(out.sequences, eager.sequences)
        assert torch.equal(out.commit_step, eager.commit_step) and out.steps == eager.steps


def test_auto_is_eager_off_cuda_and_at_temperature_above_zero(monkeypatch):
    twin = replay_graphs_eagerly(monkeypatch, auto=True)
    ids = random_prompt(1, 5, seed=1)
    kw = dict(gen_length=8, block_length=8, mask_id=MASK_ID, eos_id=EOS_ID)
    block_generate(block_model(), ids, temperature=0.5, generator=generator(1), **kw)
    assert twin.captures == 0
    with pytest.raises(ValueError, match="temperature must be 0"):
        block_generate(block_model(), ids, temperature=0.5, cuda_graphs=True, **kw)


# Errors -------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    ({"block_length": 0}, ValueError, "block_length must be a positive int"),
    ({"block_length": 2.5}, ValueError, "block_length must be a positive int"),
    ({"steps": 0}, ValueError, "steps must be a positive int"),
    ({"steps": 2.0}, TypeError, "steps must be an int"),
    ({"gen_length": 0}, ValueError, "gen_length must be a positive int"),
    ({"minimal_topk": 9}, ValueError, "minimal_topk .* exceeds gen_length"),
    ({"threshold": -0.1}, ValueError, "threshold must be >= 0"),
    ({"threshold": float("nan")}, ValueError, "threshold must be >= 0"),
    ({"threshold": "high"}, TypeError, "threshold must be a number"),
    ({"editing_threshold": -1}, ValueError, "editing_threshold must be >= 0"),
    ({"editing_threshold": float("nan")}, ValueError, "editing_threshold must be >= 0"),
    ({"max_post_steps": -1}, ValueError, "max_post_steps must be an int >= 0"),
    ({"num_to_transfer": 0}, ValueError, "num_to_transfer must be a positive int"),
    ({"temperature": -1.0}, ValueError, "temperature must be a finite number >= 0"),
    ({"top_p": 0.0}, ValueError, r"top_p must lie in \(0, 1\]"),
    ({"top_k": 0}, ValueError, "top_k must be a positive int"),
    ({"cache": "dual"}, ValueError, "no suffix to cache"),
    ({"eos_early_stop": True, "stop_at_eos": False}, ValueError, "pass stop_at_eos=True"),
    ({"mask_id": 500}, ValueError, "mask_id=500 is outside the model's vocabulary"),
    ({"eos_id": MASK_ID}, ValueError, "eos_id and mask_id are both"),
    ({"eos_id": -3}, ValueError, "eos_id=-3 is outside the model's vocabulary"),
    ({"generator": 3}, TypeError, "generator must be a torch.Generator"),
    ({"cuda_graphs": "yes"}, ValueError, "cuda_graphs must be 'auto', True or False"),
]


@pytest.mark.parametrize(("options", "error", "message"), BAD_OPTIONS, ids=str)
def test_bad_options_are_refused_by_name(options, error, message):
    kw = {"gen_length": 8, "block_length": 8, "mask_id": MASK_ID, "eos_id": EOS_ID, **options}
    with pytest.raises(error, match=message):
        block_generate(block_model(), random_prompt(1, 4), **kw)


STEP = importlib.import_module("mosa.sampling.block_diffusion_step")


def always(monkeypatch, token: int, confidence: float, rows=None):
    """Every step samples ``token`` with ``confidence`` (in ``rows`` only, when given; the
    other rows as the model says)."""
    real = STEP.sample_tokens

    def sample(*args, **kw):
        real_token, real_confidence = real(*args, **kw)
        chosen = torch.ones_like(real_token, dtype=torch.bool)
        if rows is not None:
            chosen = torch.zeros_like(chosen)
            chosen[rows] = True
        return (
            torch.where(chosen, token, real_token),
            torch.where(chosen, confidence, real_confidence),
        )

    monkeypatch.setattr(STEP, "sample_tokens", sample)


def test_llada2_leaves_masks_the_model_predicts_as_published(monkeypatch):
    always(monkeypatch, MASK_ID, 0.5)
    out = run(block_model(), random_prompt(1, 5), gen_length=12, block_length=8, steps=4)
    assert (out.sequences[0, 5:] == MASK_ID).all() and (out.commit_step == -1).all()
    assert out.steps == 3 * 4  # every step of the three blocks ran


def test_llada21_refuses_a_model_that_keeps_predicting_the_mask(monkeypatch):
    always(monkeypatch, MASK_ID, 0.5)
    with pytest.raises(ValueError, match="keeps predicting the mask token"):
        run(block_model(), random_prompt(1, 5), gen_length=12, block_length=8,
            editing_threshold=0.9)  # fmt: skip


@pytest.mark.parametrize("editing_threshold", [None, 0.5])
def test_nonfinite_logits_are_refused_naming_the_row(monkeypatch, editing_threshold):
    always(monkeypatch, -1, float("nan"), rows=1)  # sample_tokens' mark for such a row
    ids, mask = padded_prompts([4, 6, 3], seed=1)
    with pytest.raises(ValueError, match=r"NaN or infinite logits for batch rows \[1\]"):
        run(block_model(), ids, mask, gen_length=8, block_length=8,
            editing_threshold=editing_threshold)  # fmt: skip


def test_right_padding_is_refused():
    ids, mask = padded_prompts([3, 5], seed=1)
    with pytest.raises(ValueError, match="attention_mask must be left padding"):
        block_generate(block_model(), ids, mask.flip(1), gen_length=8, mask_id=MASK_ID)


def test_a_prompt_holding_the_mask_id_is_refused():
    prompt = random_prompt(1, 6)
    prompt[0, 3] = MASK_ID
    with pytest.raises(ValueError, match="the prompt holds the mask id"):
        block_generate(block_model(), prompt, gen_length=8, mask_id=MASK_ID, eos_id=EOS_ID)


@pytest.mark.parametrize(
    ("model", "sampler"), [(llada_model, "mosa.generate"), (dream_model, "mosa.diffusion_generate")]
)
def test_a_model_that_is_not_block_diffusion_is_refused_naming_its_sampler(model, sampler):
    with pytest.raises(ValueError, match=f"not a block-diffusion model; sample it with {sampler}"):
        block_generate(model(), random_prompt(1, 4), gen_length=8, mask_id=MASK_ID)


def test_a_model_of_no_mosa_family_is_refused():
    with pytest.raises(TypeError, match="needs a mosa block-diffusion model"):
        block_generate(torch.nn.Linear(2, 2), random_prompt(1, 4), gen_length=8)


def test_generate_refuses_a_block_diffusion_model_naming_block_generate():
    with pytest.raises(ValueError, match="sample it with mosa.block_generate"):
        generate(block_model(), random_prompt(1, 4), gen_length=8, mask_id=MASK_ID)

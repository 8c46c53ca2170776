"""``mosa.sampling.diffusion_generate`` against Dream's ``_sample`` loop (docs/DESIGN.md §6)."""

from __future__ import annotations

import pytest
import torch
from reference_loops import dream_reference, shifted
from sampling_builders import (
    MASK_ID,
    UnshiftedLogits,
    dream_model,
    generator,
    padded_prompts,
    random_prompt,
    replay_graphs_eagerly,
)

from mosa.sampling import GenerateOutput, diffusion_generate

ALGORITHMS = ["maskgit_plus", "topk_margin", "entropy"]
FILTERS = [{}, {"top_p": 0.9}, {"top_k": 5}, {"top_p": 0.8, "top_k": 8}]
LENGTHS = [(8, 8), (8, 3)]  # (max_new_tokens, steps): steps = and < max_new_tokens


def filter_id(filters: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in filters.items()) or "unfiltered"


def run_pair(prompt, attention_mask=None, *, max_new_tokens, steps, seed=0, **kw):
    """``diffusion_generate`` on the fused model and the reference loop on its unshifted view.

    Returns the output and the reference's ``(sequences, commit_step)``; the reference is
    also run with Dream's ``log(p + 1e-10)`` entropy and must agree with the exact form, so
    the exact form mosa uses cannot be what makes them match.
    """
    out = diffusion_generate(
        dream_model(), prompt, attention_mask, max_new_tokens=max_new_tokens, steps=steps,
        mask_token_id=MASK_ID, return_dict_in_generate=True, generator=generator(seed), **kw,
    )  # fmt: skip
    reference = [
        dream_reference(
            UnshiftedLogits(dream_model()),
            prompt,
            attention_mask,
            max_new_tokens=max_new_tokens,
            steps=steps,
            mask_id=MASK_ID,
            generator=generator(seed),
            dream_entropy_epsilon=eps,
            **kw,
        )  # fmt: skip
        for eps in (False, True)
    ]
    assert all(torch.equal(a, b) for a, b in zip(*reference, strict=True)), (
        "Dream's epsilon entropy ranks these inputs differently: choose others"
    )
    return out, reference[0]


def assert_matches(out, reference, steps):
    ref_x, ref_trace = reference
    assert isinstance(out, GenerateOutput) and out.steps == steps and out.history is None
    assert out.sequences.dtype == torch.int64 and out.sequences.shape == ref_x.shape
    assert torch.equal(out.sequences, ref_x), f"\n{out.sequences}\nreference:\n{ref_x}"
    assert torch.equal(out.commit_step, ref_trace), f"\n{out.commit_step}\nreference:\n{ref_trace}"
    assert not (out.sequences == MASK_ID).any()


@pytest.mark.parametrize(("max_new_tokens", "steps"), LENGTHS)
@pytest.mark.parametrize("filters", FILTERS, ids=filter_id)
@pytest.mark.parametrize("alg", ALGORITHMS)
def test_matches_reference_at_temperature_zero(alg, filters, max_new_tokens, steps):
    prompt = random_prompt(2, 5, seed=1)
    out, reference = run_pair(
        prompt, max_new_tokens=max_new_tokens, steps=steps, alg=alg, **filters
    )
    assert_matches(out, reference, steps)
    assert torch.equal(out.sequences[:, :5], prompt)


@pytest.mark.parametrize("filters", [{}, {"top_p": 0.8, "top_k": 8}], ids=filter_id)
@pytest.mark.parametrize("alg", ALGORITHMS)
def test_matches_reference_at_positive_temperature(alg, filters):
    """The noise contract: one seed per step, Gumbel at (b * W + j, token id) over the
    tempered, filtered logits; the confidence from the tempered distribution."""
    out, reference = run_pair(
        random_prompt(2, 5, seed=1), max_new_tokens=8, steps=3, seed=3, alg=alg,
        temperature=0.7, **filters,
    )  # fmt: skip
    assert_matches(out, reference, 3)


def test_filters_change_the_result():
    """Guards the grid: top_p / top_k do change the reference's result on these inputs."""
    prompt = random_prompt(2, 5, seed=1)
    results = {
        filter_id(f): run_pair(prompt, max_new_tokens=8, steps=3, alg="maskgit_plus", **f)[1]
        for f in FILTERS
    }
    assert not torch.equal(results["unfiltered"][0], results["top_k5"][0])


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_padded_batch_matches_reference_and_each_prompt_alone(alg):
    lengths = [3, 6, 4]
    ids, mask = padded_prompts(lengths, seed=4)
    out, reference = run_pair(ids, mask, max_new_tokens=8, steps=4, alg=alg)
    assert_matches(out, reference, 4)
    for row, n in enumerate(lengths):
        alone = diffusion_generate(
            dream_model(), ids[row, -n:][None], max_new_tokens=8, steps=4, alg=alg,
            mask_token_id=MASK_ID,
        )  # fmt: skip
        assert torch.equal(alone[0, n:], out.sequences[row, ids.shape[1] :]), f"row {row}"


@pytest.mark.parametrize(
    "kw",
    [
        {"alg": "maskgit_plus"},
        {"alg": "entropy", "top_p": 0.8, "top_k": 8},
        {"alg": "topk_margin", "temperature": 0.7},
        {"alg": "maskgit_plus", "temperature": 0.7, "top_p": 0.9},
        {"alg": "origin", "temperature": 0.7},
        {"alg": "maskgit_plus", "alg_temp": 0.5},
    ],
    ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()),
)
def test_generic_model_gives_the_fused_result(kw):
    """A ``.logits`` model is taken to return unshifted logits (as Hugging Face's DreamModel
    does): the sampler shifts them, and must then agree with the fused path."""
    ids, mask = padded_prompts([4, 6], seed=8)
    common = dict(max_new_tokens=8, steps=4, mask_token_id=MASK_ID, return_dict_in_generate=True)
    fused = diffusion_generate(dream_model(), ids, mask, generator=generator(2), **common, **kw)
    generic = diffusion_generate(
        UnshiftedLogits(dream_model()), ids, mask, generator=generator(2), **common, **kw
    )
    assert torch.equal(fused.sequences, generic.sequences)
    assert torch.equal(fused.commit_step, generic.commit_step)


def test_origin_decodes_what_is_left_on_the_last_step():
    """eps = 0.9: each step but the last moves t only from about 1 to 0.9, so origin's transfer
    probability 1 - s/t is small; the last step must decode everything left regardless."""
    out = diffusion_generate(
        dream_model(), random_prompt(2, 5, seed=5), max_new_tokens=8, steps=3, eps=0.9,
        alg="origin", mask_token_id=MASK_ID, generator=generator(0),
        return_dict_in_generate=True,
    )  # fmt: skip
    assert not (out.sequences == MASK_ID).any()
    assert int((out.commit_step == 2).sum()) > 8  # most of the 16 positions: the last step


def test_origin_in_one_step_decodes_everything_greedily():
    """One step: every masked position has transfer probability 1 and takes its argmax."""
    prompt = random_prompt(2, 5, seed=5)
    origin = diffusion_generate(
        dream_model(), prompt, max_new_tokens=8, steps=1, alg="origin", mask_token_id=MASK_ID
    )
    _, reference = run_pair(prompt, max_new_tokens=8, steps=1, alg="maskgit_plus")
    assert torch.equal(origin, reference[0])


@pytest.mark.parametrize(
    "kw",
    [
        {"alg": "origin"},
        {"alg": "origin", "temperature": 0.8, "top_k": 10},
        {"alg": "maskgit_plus", "alg_temp": 0.5},
        {"alg": "entropy", "alg_temp": 1.0, "temperature": 0.5},
    ],
    ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()),
)
def test_random_algorithms_repeat_with_the_generator_seed(kw):
    prompt = random_prompt(2, 5, seed=6)

    def run(seed):
        return diffusion_generate(
            dream_model(), prompt, max_new_tokens=8, steps=4, mask_token_id=MASK_ID,
            return_dict_in_generate=True, generator=generator(seed), **kw,
        )  # fmt: skip

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first.sequences, again.sequences)
    assert torch.equal(first.commit_step, again.commit_step)
    assert not torch.equal(first.commit_step, other.commit_step)
    assert not (first.sequences == MASK_ID).any()  # the last step commits what is left
    assert (first.commit_step >= 0).all() and (first.commit_step < 4).all()
    if kw["alg"] != "origin":  # alg_temp draws which positions, not how many
        _, reference = run_pair(prompt, max_new_tokens=8, steps=4, alg="maskgit_plus")
        for row, ref_row in zip(first.commit_step, reference[1], strict=True):
            assert torch.equal(
                torch.bincount(row, minlength=4), torch.bincount(ref_row, minlength=4)
            )


def test_history_records_the_canvas_after_every_step():
    ids, mask = padded_prompts([3, 5], seed=9)
    out = diffusion_generate(
        dream_model(), ids, mask, max_new_tokens=8, steps=5, alg="entropy",
        mask_token_id=MASK_ID, output_history=True, return_dict_in_generate=True,
    )  # fmt: skip
    assert isinstance(out.history, list) and len(out.history) == 5
    assert torch.equal(out.history[-1], out.sequences)
    for step, canvas in enumerate(out.history):
        assert canvas.shape == out.sequences.shape
        assert torch.equal(canvas[:, :5], ids)
        decoded = canvas[:, 5:] != MASK_ID
        assert torch.equal(decoded, out.commit_step <= step)
        assert torch.equal(canvas[:, 5:][decoded], out.sequences[:, 5:][decoded])
    # Without return_dict_in_generate the sequences alone come back.
    plain = diffusion_generate(
        dream_model(), ids, mask, max_new_tokens=8, steps=5, alg="entropy",
        mask_token_id=MASK_ID, output_history=True,
    )  # fmt: skip
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, out.sequences)


def test_max_length_counts_the_prompt():
    prompt = random_prompt(2, 5, seed=10)
    kw = dict(steps=4, alg="maskgit_plus", mask_token_id=MASK_ID)
    by_length = diffusion_generate(dream_model(), prompt, max_length=13, **kw)
    by_new = diffusion_generate(dream_model(), prompt, max_new_tokens=8, **kw)
    assert by_length.shape == (2, 13) and torch.equal(by_length, by_new)
    one_row = diffusion_generate(dream_model(), prompt[0], max_new_tokens=8, **kw)
    assert torch.equal(one_row, by_new[:1])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"alg": "greedy"}, "alg"),
        ({"max_new_tokens": None}, "max_new_tokens"),
        ({"max_new_tokens": None, "max_length": 5}, "max_length"),  # no room after the prompt
        ({"steps": 0}, "steps"),
        ({"eps": 0.0}, "eps"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"prompt_bucket": 0}, "prompt_bucket"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_bad_inputs_raise_clear_errors(overrides, message):
    kw = dict(max_new_tokens=8, steps=4, mask_token_id=MASK_ID)
    kw.update(overrides)
    with pytest.raises(ValueError, match=message):
        diffusion_generate(dream_model(), random_prompt(2, 5), **kw)


def test_inputs_that_are_not_a_tensor_raise_a_type_error():
    with pytest.raises(TypeError, match="inputs|prompt"):
        diffusion_generate(dream_model(), [[1, 2, 3]], max_new_tokens=4, mask_token_id=MASK_ID)


@pytest.mark.parametrize("alg_temp", [1e-2, 1e-4])
def test_alg_temp_decodes_only_masked_positions(alg_temp):
    """A small ``alg_temp`` makes softmax(confidence / alg_temp) underflow to one-hot; the
    ``count`` positions must still be masked ones: nothing decoded is overwritten, and every
    position is decoded by the last step."""
    prompt = random_prompt(2, 5, seed=6)
    out = diffusion_generate(
        dream_model(), prompt, max_new_tokens=8, steps=3, alg="maskgit_plus", alg_temp=alg_temp,
        mask_token_id=MASK_ID, generator=generator(0), output_history=True,
        return_dict_in_generate=True,
    )  # fmt: skip
    previous = torch.cat([prompt, torch.full((2, 8), MASK_ID)], dim=1)
    for canvas in out.history:
        decoded = previous != MASK_ID
        assert torch.equal(canvas[decoded], previous[decoded]), "a decoded token was overwritten"
        previous = canvas
    assert not (out.sequences == MASK_ID).any(), f"masks left:\n{out.sequences}"
    assert (out.commit_step >= 0).all()


def test_alg_temp_draws_positions_from_the_confidence_softmax():
    """Step 0 of 3 new tokens in 2 steps commits int(3 (1 - s/t)) = 1 position, drawn from
    softmax(confidence / alg_temp) over the masked ones (maskgit_plus, T = 0)."""
    prompt = random_prompt(1, 5, seed=7)
    x = torch.cat([prompt, torch.full((1, 3), MASK_ID)], dim=1)
    with torch.no_grad():
        logits = shifted(UnshiftedLogits(dream_model())(x).logits)[0, 5:]
    confidence = torch.softmax(logits.double(), dim=-1).max(dim=-1).values
    alg_temp = float(confidence.max() - confidence.min()) / 2
    expected = torch.softmax(confidence / alg_temp, dim=0)
    assert expected.max() < 0.8 and expected.min() > 0.05  # far from uniform and from one-hot

    draws = 300
    first = torch.zeros(3)
    for seed in range(draws):
        out = diffusion_generate(
            dream_model(), prompt, max_new_tokens=3, steps=2, alg="maskgit_plus",
            alg_temp=alg_temp, mask_token_id=MASK_ID, generator=generator(seed),
            return_dict_in_generate=True,
        )  # fmt: skip
        assert int((out.commit_step == 0).sum()) == 1
        first += (out.commit_step[0] == 0).double()
    frequency = first / draws
    sigma = (expected * (1 - expected) / draws).sqrt()
    assert ((frequency - expected).abs() < 4 * sigma).all(), f"{frequency} vs {expected}"


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
def test_graph_path_gives_the_eager_result_and_captures_once(monkeypatch, alg):
    """The step replayed as a CUDA graph (here: eagerly, failing on host reads) reads its step
    number and count from tensors: the eager loop's tokens, decoding order and step count,
    and one capture serves a second call of the same shape (prompts bucketed to 16)."""
    twin = replay_graphs_eagerly(monkeypatch)
    kw = dict(max_new_tokens=12, steps=6, alg=alg, mask_token_id=MASK_ID)
    kw["return_dict_in_generate"] = True
    for seed, lengths in ((40, [4, 7, 5]), (41, [9, 3, 6])):
        ids, mask = padded_prompts(lengths, seed=seed)
        graphed = diffusion_generate(dream_model(), ids, mask, cuda_graphs=True, **kw)
        eager = diffusion_generate(dream_model(), ids, mask, cuda_graphs=False, **kw)
        assert torch.equal(graphed.sequences, eager.sequences)
        assert torch.equal(graphed.commit_step, eager.commit_step)
        assert graphed.steps == eager.steps
        assert twin.captures == 1
    assert len(twin.replays) == 2 * 6 - 1  # every step but the first call's warm-up


def test_prompt_ids_outside_the_vocabulary_are_named():
    with pytest.raises(
        ValueError, match=r"token id 128, outside the model's vocabulary \[0, 128\)"
    ):
        diffusion_generate(
            dream_model(),
            torch.tensor([[1, 128]]),
            max_new_tokens=4,
            steps=4,
            mask_token_id=MASK_ID,
        )


def test_graph_sets_differ_by_prompt_length(monkeypatch):
    """Same sequence length and first masked position, other prompt lengths (a fixed response
    prefix makes up the difference): the trace each call returns is its own width."""
    replay_graphs_eagerly(monkeypatch)
    kw = dict(steps=4, alg="entropy", mask_token_id=MASK_ID, return_dict_in_generate=True)
    fixed = torch.full((32,), MASK_ID)
    fixed[:16] = torch.randint(0, 100, (16,), generator=generator(42))
    calls = [
        (random_prompt(1, 16, seed=43), dict(max_new_tokens=32, response=fixed)),
        (random_prompt(1, 32, seed=44), dict(max_new_tokens=16)),
    ]
    for ids, extra in calls:
        graphed = diffusion_generate(dream_model(), ids, cuda_graphs=True, **kw, **extra)
        eager = diffusion_generate(dream_model(), ids, cuda_graphs=False, **kw, **extra)
        assert graphed.commit_step.shape == (1, extra["max_new_tokens"])
        assert torch.equal(graphed.commit_step, eager.commit_step)
        assert torch.equal(graphed.sequences, eager.sequences)

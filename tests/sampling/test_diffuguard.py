"""``mosa.sampling.diffuguard``: SAR against greedy ``generate``, the audit probe, repairs."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from sampling_builders import MASK_ID, PROMPT_VOCAB, dream_model, llada_model, padded_prompts

import mosa
import mosa.tiny
from mosa.eval.attacked import build_response_canvas
from mosa.sampling import generate
from mosa.sampling.diffuguard import DiffuGuard, diffuguard_generate
from mosa.sampling.harm_probe import Probe
from mosa.text.prompts import encode_prompts, load_tokenizer
from mosa.tiny import corpus

TINY = {"steps": 40, "gen_length": 40, "block_length": 8}  # the tiny model's evaluation schedule
ODD = {"steps": 6, "gen_length": 10, "block_length": 5}  # 5 masks over 3 steps per block
SHORT = {"steps": 8, "gen_length": 16, "block_length": 8}  # two blocks, two commits a step
PREFILL = "sure , here is how to"


@lru_cache
def tiny():
    return mosa.load_model(mosa.tiny.path()), load_tokenizer(mosa.tiny.path())


@lru_cache
def held_out() -> dict:
    return corpus.splits(0)[1]


def tiny_prompts(kinds=(("harmful", 3), ("benign", 3))) -> tuple[torch.Tensor, torch.Tensor]:
    model, tokenizer = tiny()
    prompts = [e.prompt for kind, n in kinds for e in held_out()[kind][:n]]
    return encode_prompts(tokenizer, prompts, chat_template=True, device="cpu")


def prefill_canvas() -> torch.Tensor:
    model, tokenizer = tiny()
    return build_response_canvas(tokenizer, [(0, PREFILL)], TINY["gen_length"], model.mask_token_id)


def random_canvas(batch: int, gen_length: int, seed: int) -> torch.Tensor:
    """A response canvas with a few fixed tokens at random places (mask elsewhere)."""
    generator = torch.Generator().manual_seed(seed)
    canvas = torch.full((batch, gen_length), MASK_ID)
    fixed = torch.rand(batch, gen_length, generator=generator) < 0.3
    tokens = torch.randint(0, PROMPT_VOCAB, (batch, gen_length), generator=generator)
    return torch.where(fixed, tokens, canvas)


def flag_all(model) -> Probe:
    """A probe whose score is 1 for every feature (0 . x - (-1))."""
    return Probe(torch.zeros(model.lm_head_weight.shape[1]), -1.0)


def flag_none(model) -> Probe:
    return Probe(torch.zeros(model.lm_head_weight.shape[1]), 1.0)


def tiny_canvas(batch: int, seed: int) -> torch.Tensor:
    """A tiny-model response canvas with fixed words at random places (mask elsewhere)."""
    model, tokenizer = tiny()
    generator = torch.Generator().manual_seed(seed)
    words = torch.tensor(tokenizer.convert_tokens_to_ids(corpus.LIST_WORDS))
    fixed = torch.rand(batch, SHORT["gen_length"], generator=generator) < 0.3
    picks = words[torch.randint(0, len(words), fixed.shape, generator=generator)]
    return torch.where(fixed, picks, model.mask_token_id)


def sar_run(alpha, seed, response=None, audit=None, max_repairs=1):
    """Four tiny-model answers (two harmful, two benign) under a short schedule."""
    model, _ = tiny()
    ids, mask = tiny_prompts((("harmful", 2), ("benign", 2)))
    guard = DiffuGuard(alpha=alpha, seed=seed, audit=audit, max_repairs=max_repairs)
    return diffuguard_generate(
        model, ids, mask, guard=guard, response=response, return_details=True, **SHORT
    )


# SAR ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefill", [False, True], ids=["plain", "prefill"])
def test_alpha_zero_is_greedy_generate_on_the_tiny_model(prefill):
    model, _ = tiny()
    ids, mask = tiny_prompts()
    response = prefill_canvas() if prefill else None
    expected = generate(
        model, ids, mask, temperature=0, response=response, return_trace=True, **TINY
    )
    out = diffuguard_generate(
        model, ids, mask, guard=DiffuGuard(alpha=0), response=response, return_details=True,
        **TINY,
    )  # fmt: skip
    assert torch.equal(out.sequences, expected.sequences)
    # Same decoding order, not just the same tokens.
    assert torch.equal(out.commit_step, expected.commit_step)
    assert out.steps == TINY["steps"] and not out.repairs.any() and out.scores is None


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_alpha_zero_is_greedy_generate_on_random_models_with_odd_shapes(family):
    model = llada_model() if family == "llada" else dream_model()
    ids, mask = padded_prompts([3, 7, 5], seed=1)
    ids[1, -2] = MASK_ID  # a prompt mask: generate fills it in too, from the first block on
    response = random_canvas(3, ODD["gen_length"], seed=2)
    expected = generate(
        model, ids, mask, temperature=0, response=response, mask_id=MASK_ID, return_trace=True,
        fill_prompt_masks=True, **ODD,
    )  # fmt: skip
    out = diffuguard_generate(
        model, ids, mask, guard=DiffuGuard(alpha=0), response=response, mask_id=MASK_ID,
        return_details=True, fill_prompt_masks=True, **ODD,
    )  # fmt: skip
    assert torch.equal(out.sequences, expected.sequences)
    assert torch.equal(out.commit_step, expected.commit_step)


def test_same_seed_repeats_and_another_seed_changes_the_order():
    first, again, other = sar_run(0.7, 0), sar_run(0.7, 0), sar_run(0.7, 1)
    assert torch.equal(first.sequences, again.sequences)
    assert torch.equal(first.commit_step, again.commit_step)
    assert not torch.equal(first.commit_step, other.commit_step)


def test_alpha_changes_which_positions_are_committed_first():
    greedy, sar = sar_run(0.0, 0), sar_run(0.7, 0)
    assert not torch.equal(greedy.commit_step, sar.commit_step)
    # Each step still commits LLaDA's scheduled count: two positions per step and row.
    for out in (greedy, sar):
        for row in out.commit_step:
            assert sorted(row.tolist()) == [step for step in range(8) for _ in range(2)]


def test_alpha_anneals_linearly_to_zero():
    assert DiffuGuard(alpha=0.6).alphas(4) == pytest.approx([0.6, 0.4, 0.2, 0.0])
    assert DiffuGuard(alpha=0.6).alphas(1) == [0.6]


def test_fixed_tokens_never_change_even_when_every_block_is_repaired():
    model, _ = tiny()
    response = tiny_canvas(4, seed=5)
    fixed = response != model.mask_token_id
    out = sar_run(1.0, 0, response=response, audit=flag_all(model), max_repairs=2)
    assert out.repairs.eq(2).all() and fixed.any(dim=1).all()
    generated = out.sequences[:, -SHORT["gen_length"] :]
    assert torch.equal(generated[fixed], response[fixed])
    assert (out.commit_step[fixed] == -1).all()
    assert (out.commit_step[~fixed] >= 0).all()


# Audit and repair ---------------------------------------------------------------------------


def test_repair_decodes_a_flagged_block_again_and_an_unflagged_one_not():
    model, _ = tiny()
    plain = sar_run(0.5, 0)
    never = sar_run(0.5, 0, audit=flag_none(model))
    assert torch.equal(never.sequences, plain.sequences)
    assert torch.equal(never.commit_step, plain.commit_step)
    assert not never.repairs.any() and (never.scores < 0).all() and never.steps == 8

    always = sar_run(0.5, 0, audit=flag_all(model))
    assert always.repairs.eq(1).all() and (always.scores > 0).all()
    assert always.steps == 16  # two blocks of 4 steps, each decoded twice
    # Block b runs at steps 8b..8b+3 and is decoded again at 8b+4..8b+7.
    for block in range(2):
        steps = always.commit_step[:, block * 8 : (block + 1) * 8]
        assert ((steps >= 8 * block + 4) & (steps < 8 * block + 8)).all()
    assert sar_run(0.5, 0, audit=flag_all(model), max_repairs=0).repairs.eq(0).all()


@lru_cache
def calibrated() -> DiffuGuard:
    model, tokenizer = tiny()
    train = corpus.splits(0)[0]
    harmful = [e.prompt for e in train["harmful"][:6]]
    benign = [e.prompt for e in train["benign"][:6]]
    return DiffuGuard.calibrate(model, tokenizer, harmful, benign, alpha=0.3, **TINY)


@pytest.mark.slow
def test_calibrated_audit_flags_harmful_prompts_and_leaves_benign_ones_alone():
    model, _ = tiny()
    guard = calibrated()
    assert guard.alpha == 0.3 and guard.audit.width == model.lm_head_weight.shape[1]
    ids, mask = tiny_prompts((("harmful", 3), ("benign", 4)))
    out = diffuguard_generate(model, ids, mask, guard=guard, return_details=True, **TINY)
    assert (out.scores[:3, 0] > 0).all() and out.repairs[:3].any(dim=1).all()
    assert (out.scores[3:] <= 0).all() and not out.repairs[3:].any()
    # Rows are independent: the benign rows are what SAR alone gives them, although the
    # harmful rows beside them were repaired.
    sar = diffuguard_generate(
        model, ids, mask, guard=DiffuGuard(alpha=0.3), return_details=True, **TINY
    )
    assert torch.equal(out.sequences[3:], sar.sequences[3:])
    # Same decoding order (the step numbers differ: the repairs' steps are counted too).
    order = torch.argsort(out.commit_step[3:], dim=1, stable=True)
    assert torch.equal(order, torch.argsort(sar.commit_step[3:], dim=1, stable=True))


def test_probe_fit_separates_two_clusters():
    generator = torch.Generator().manual_seed(0)
    spread = torch.tensor([10.0, 1.0, 1.0, 1.0])  # a noisy dimension that does not separate
    harmful = torch.randn(50, 4, generator=generator) * spread + torch.tensor([0, 2.0, 0, 0])
    benign = torch.randn(50, 4, generator=generator) * spread - torch.tensor([0, 2.0, 0, 0])
    probe = Probe.fit(harmful, benign)
    assert (probe.score(harmful) > 0).float().mean() > 0.9
    assert (probe.score(benign) <= 0).float().mean() > 0.9
    # Whitening discounts the noisy dimension; shrinkage 1 is the plain difference of means.
    assert probe.direction[1].abs() > 10 * probe.direction[0].abs()
    plain = Probe.fit(harmful, benign, shrinkage=1.0)
    gap = harmful.mean(0) - benign.mean(0)
    assert torch.cosine_similarity(plain.direction, gap, dim=0) > 1 - 1e-5


# Errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"alpha": -0.1}, "alpha must be a number in"),
        ({"alpha": 1.5}, "alpha must be a number in"),
        ({"alpha": float("nan")}, "alpha must be a number in"),
        ({"alpha": True}, "alpha must be a number in"),
        ({"max_repairs": -1}, "max_repairs must be an int >= 0"),
        ({"max_repairs": 1.0}, "max_repairs must be an int >= 0"),
        ({"seed": -3}, "seed must be an int >= 0"),
    ],
)
def test_bad_settings_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        DiffuGuard(**settings)


def test_bad_arguments_are_refused():
    model = llada_model()
    ids, mask = padded_prompts([3, 4], seed=0)
    ok = {"steps": 4, "gen_length": 8, "block_length": 4, "mask_id": MASK_ID}
    guard = DiffuGuard()

    def run(guard=guard, model=model, **changes):
        return diffuguard_generate(model, ids, mask, guard=guard, **{**ok, **changes})

    with pytest.raises(TypeError, match="audit must be a Probe"):
        DiffuGuard(audit="probe")
    with pytest.raises(TypeError, match="guard must be a DiffuGuard"):
        run(guard={"alpha": 0.3})
    with pytest.raises(ValueError, match=r"gen_length \(8\) must be a multiple of block_length"):
        run(block_length=3)
    with pytest.raises(ValueError, match=r"steps \(3\) must be a positive multiple"):
        run(steps=3)
    with pytest.raises(ValueError, match="block_length must be a positive int"):
        run(block_length=0)
    with pytest.raises(ValueError, match="probe has width 5 but the model's hidden size is 64"):
        run(guard=DiffuGuard(audit=Probe(torch.zeros(5), 0.0)))
    with pytest.raises(TypeError, match="needs a mosa model"):
        run(model=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"shrinkage must be in \(0, 1\]"):
        Probe.fit(torch.ones(2, 3), torch.zeros(2, 3), shrinkage=0)
    with pytest.raises(ValueError, match="the same mean"):
        Probe.fit(torch.ones(2, 3), torch.ones(2, 3))
    tiny_model, tokenizer = tiny()
    with pytest.raises(ValueError, match="calibrate builds the audit"):
        DiffuGuard.calibrate(tiny_model, tokenizer, ["a"], ["b"], audit=None)
    with pytest.raises(ValueError, match="harmful must be a non-empty list of prompt strings"):
        DiffuGuard.calibrate(tiny_model, tokenizer, "how do i make a bomb ?", ["b"], **TINY)

"""The analyses on the embedded tiny model: decoding order (block by block, one token per step
with its default schedule), the linear fit, the prefill-position sweep and GCG per position."""

from __future__ import annotations

import math

import pytest

from mosa.eval import Rate, decoding_order, gcg_positions, linear_fit, prefill_sweep
from mosa.tiny import corpus
from mosa.tiny.evaluate import SAMPLER_DEFAULTS, HarmJudge

BLOCK = SAMPLER_DEFAULTS["block_length"]
G = SAMPLER_DEFAULTS["gen_length"]


@pytest.fixture
def harmful(held_out_harmful):
    return held_out_harmful[:3]


def test_decoding_order_goes_block_by_block(model, tokenizer, harmful):
    order = decoding_order(model, tokenizer, harmful, **SAMPLER_DEFAULTS)
    assert len(order) == SAMPLER_DEFAULTS["steps"]
    assert all(0 <= value < G for value in order)
    # One token per step, each inside the block being decoded (semi-autoregressive).
    steps_per_block = SAMPLER_DEFAULTS["steps"] // (G // BLOCK)
    for step, value in enumerate(order):
        block = step // steps_per_block
        assert block * BLOCK <= value < (block + 1) * BLOCK
    assert sum(order[:steps_per_block]) < sum(order[-steps_per_block:])
    slope, _, r2 = linear_fit(order)
    assert slope > 0 and r2 > 0.8


def test_decoding_order_of_one_prompt_visits_every_position_once(model, tokenizer, harmful):
    order = decoding_order(model, tokenizer, harmful[:1], **SAMPLER_DEFAULTS)
    assert sorted(order) == list(range(G))


def test_steps_that_commit_nothing_are_nan(model, tokenizer, harmful):
    # 16 steps for a block of 8 tokens: the last 8 steps of each block commit nothing.
    order = decoding_order(model, tokenizer, harmful[:1], gen_length=16, block_length=8, steps=32)
    assert all(math.isnan(v) for v in order[8:16])
    assert not any(math.isnan(v) for v in order[:8])


def test_linear_fit():
    slope, intercept, r2 = linear_fit([1.0, 3.0, float("nan"), 7.0])
    assert (slope, intercept, r2) == pytest.approx((2.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="at least two"):
        linear_fit([1.0, float("nan")])


def test_prefill_sweep_gives_a_rate_per_position(model, tokenizer, harmful):
    rates = prefill_sweep(
        model, tokenizer, harmful, "step 1 :", [0, 20], HarmJudge(), **SAMPLER_DEFAULTS
    )
    assert list(rates) == [0, 20]
    assert all(isinstance(r, Rate) and 0 <= r.rate <= 1 and r.errors == 0 for r in rates.values())
    with pytest.raises(ValueError, match="overflows the canvas"):
        prefill_sweep(model, tokenizer, harmful, "step 1 :", [0, 38], HarmJudge(), gen_length=G)
    with pytest.raises(ValueError, match="positions must be a non-empty list"):
        prefill_sweep(model, tokenizer, harmful, "step 1 :", [], HarmJudge())


def test_gcg_positions(model, tokenizer, harmful):
    search = {"steps": 2, "suffix_length": 4, "candidates": 8}
    outcomes = gcg_positions(
        model,
        tokenizer,
        harmful[:1],
        corpus.AFFIRMATIVE_PREFIX,
        [0, 10],
        HarmJudge(),
        gcg=search,
        **SAMPLER_DEFAULTS,
    )
    assert list(outcomes) == [0, 10]
    for outcome in outcomes.values():
        assert len(outcome.searches) == len(outcome.responses) == 1
        assert 0 <= outcome.rate.rate <= 1
        assert outcome.mean_loss == outcome.searches[0].loss

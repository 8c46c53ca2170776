"""DiffuGuard on ``block_generate`` (a block-diffusion model, LLaDA2): SAR through
``BlockHooks.rank``, the audit and repair through ``BlockHooks.block_end``."""

from __future__ import annotations

import pytest
import torch
from sampling_builders import MASK_ID, PROMPT_VOCAB, block_model, padded_prompts
from test_diffuguard import flag_all, flag_none

from mosa.sampling import block_generate
from mosa.sampling.diffuguard import DiffuGuard, diffuguard_generate
from mosa.sampling.harm_probe import Probe

EOS_ID = 125
# Schedule only (threshold above 1), so SAR's order decides every commit; two commits a step.
SCHEDULE = {"steps": 4, "gen_length": 20, "block_length": 8, "threshold": 2.0}
PARALLEL = {"steps": 8, "gen_length": 20, "block_length": 8, "threshold": 0.9}


def canvas(batch: int, seed: int, gen_length: int = 20) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    fixed = torch.rand(batch, gen_length, generator=generator) < 0.3
    tokens = torch.randint(0, PROMPT_VOCAB, (batch, gen_length), generator=generator)
    return torch.where(fixed, tokens, MASK_ID)


def guarded(ids, mask, guard, **options):
    kw = {"mask_id": MASK_ID, "eos_id": EOS_ID, "stop_at_eos": False, **SCHEDULE, **options}
    return diffuguard_generate(block_model(), ids, mask, guard=guard, return_details=True, **kw)


def plain(ids, mask, **options):
    kw = {"mask_id": MASK_ID, "eos_id": EOS_ID, "stop_at_eos": False, **SCHEDULE, **options}
    return block_generate(block_model(), ids, mask, return_trace=True, cuda_graphs=False, **kw)


@pytest.mark.parametrize("cache", [None, "prefix"])
@pytest.mark.parametrize("settings", [SCHEDULE, PARALLEL], ids=["schedule", "threshold"])
def test_greedy_unflagged_guard_is_block_generate(settings, cache):
    ids, mask = padded_prompts([3, 9, 14], seed=2)
    response = canvas(3, seed=4)
    model = block_model()
    guard = DiffuGuard(alpha=0.0, audit=flag_none(model))
    out = guarded(ids, mask, guard, response=response, cache=cache, **settings)
    reference = plain(ids, mask, response=response, cache=cache, **settings)
    assert torch.equal(out.sequences, reference.sequences)
    assert torch.equal(out.commit_step, reference.commit_step) and out.steps == reference.steps
    assert (out.repairs == 0).all() and (out.scores < 0).all()
    assert out.scores.shape == out.repairs.shape == (3, 4)  # blocks 1..4 of the canvas


def test_sar_reorders_and_a_seed_repeats():
    ids, mask = padded_prompts([5, 11], seed=3)
    greedy = guarded(ids, mask, DiffuGuard(alpha=0.0))
    first = guarded(ids, mask, DiffuGuard(alpha=1.0, seed=7))
    again = guarded(ids, mask, DiffuGuard(alpha=1.0, seed=7))
    other = guarded(ids, mask, DiffuGuard(alpha=1.0, seed=8))
    assert torch.equal(first.sequences, again.sequences)
    assert torch.equal(first.commit_step, again.commit_step)
    assert not torch.equal(first.commit_step, greedy.commit_step)
    assert not torch.equal(first.commit_step, other.commit_step)


@pytest.mark.parametrize("cache", [None, "prefix"])
def test_a_flagged_block_is_decoded_again_and_fixed_tokens_survive(cache):
    ids, mask = padded_prompts([4, 12], seed=5)
    response = canvas(2, seed=6)
    model = block_model()
    guard = DiffuGuard(alpha=0.0, audit=flag_all(model), max_repairs=2)
    out = guarded(ids, mask, guard, response=response, cache=cache)
    reference = plain(ids, mask, response=response, cache=cache)
    assert (out.repairs == 2).all()  # every block, each time again
    fixed = response != MASK_ID
    width = ids.shape[1]
    assert torch.equal(out.sequences[:, width:][fixed], response[fixed])
    assert (out.commit_step[fixed] == -1).all()
    # Random-order repairs: the order differs from greedy's and more steps ran.
    assert not torch.equal(out.commit_step, reference.commit_step)
    assert out.steps > reference.steps
    again = guarded(ids, mask, guard, response=response, cache=cache)
    assert torch.equal(again.sequences, out.sequences)


def test_only_flagged_rows_are_repaired():
    """A probe between two rows' first-block features flags one and not the other: only the
    flagged row's block is decoded again."""
    from mosa.sampling import diffuguard as module

    ids, mask = padded_prompts([6, 10, 3], seed=9)
    model = block_model()
    reference = plain(ids, mask)
    kw = dict(mask_id=MASK_ID, eos_id=EOS_ID, stop_at_eos=False, **SCHEDULE)
    collected = module._run(model, ids, mask, guard=DiffuGuard(alpha=0.0), collect=True, **kw)
    flagged, spared = collected.features[0, 0], collected.features[1, 0]
    direction = flagged - spared
    probe = Probe(direction, float(0.5 * (flagged + spared) @ direction))
    out = guarded(ids, mask, DiffuGuard(alpha=0.0, audit=probe, max_repairs=1))
    assert out.repairs[0, 0] == 1 and out.repairs[1, 0] == 0
    width, block = ids.shape[1], slice(0, 8 - 10 % 8)  # row 1's first block's response part
    assert torch.equal(out.sequences[1, width:][block], reference.sequences[1, width:][block])
    for row in (out.repairs.sum(dim=1) == 0).nonzero()[:, 0].tolist():
        assert torch.equal(out.sequences[row], reference.sequences[row])
        assert torch.equal(out.commit_step[row], reference.commit_step[row])
    assert not torch.equal(out.commit_step[0], reference.commit_step[0])


def test_the_audit_features_are_the_block_causal_forward_s():
    from mosa.sampling import diffuguard as module
    from mosa.sampling.harm_probe import pooled_features

    model = block_model()
    ids, _ = padded_prompts([7], seed=1)
    out = module._run(
        model, ids, None, guard=DiffuGuard(alpha=0.0), collect=True, mask_id=MASK_ID,
        eos_id=EOS_ID, stop_at_eos=False, **SCHEDULE,
    )  # fmt: skip
    # The feature after the k-th block: the block-causal forward of the final canvas cut at
    # that block's end (later blocks are never seen; greedy blocks never change). The last
    # block's overrun past the response is decoded and cut, so it is left out.
    x = out.sequences
    assert out.features.shape[1] == 4
    with torch.no_grad():
        for k in range(3):
            end = (k + 1) * 8
            expected = pooled_features(model, x[:, :end], None, 7, slice(end - 8, end), 8)
            torch.testing.assert_close(out.features[:, k], expected, rtol=1e-5, atol=1e-5)
    # The bidirectional forward gives other features (the block layout matters).
    with torch.no_grad():
        bidirectional = pooled_features(model, x, None, 7, slice(0, 8))
    assert not torch.allclose(out.features[:, 0], bidirectional, atol=1e-4)


def test_block_options_are_refused_for_llada_and_others_for_block_diffusion():
    ids, mask = padded_prompts([5], seed=1)
    with pytest.raises(ValueError, match=r"drop \['temperature'\]"):
        guarded(ids, mask, DiffuGuard(), temperature=0.5)
    from sampling_builders import llada_model

    with pytest.raises(ValueError, match="are block_generate's options"):
        diffuguard_generate(
            llada_model(), ids, mask, guard=DiffuGuard(), steps=4, gen_length=8, block_length=8,
            threshold=0.9, mask_id=MASK_ID,
        )  # fmt: skip


@pytest.mark.parametrize("steps", [4, 8, 12])
def test_sar_anneals_over_the_steps_the_schedule_alone_takes(steps):
    """Prompts ending at a block's end and the schedule alone (threshold above 1): the run
    takes exactly the steps alpha falls over, so its last step is greedy; a prompt ending
    inside a block takes fewer."""
    from mosa.sampling.diffuguard import _prompt_lengths, _sar_steps

    options = {**SCHEDULE, "steps": steps, "gen_length": 24}
    ids, mask = padded_prompts([8, 16], seed=2)
    assert plain(ids, mask, **options).steps == _sar_steps(options, _prompt_lengths(ids, mask))
    ids, mask = padded_prompts([5], seed=2)
    assert plain(ids, mask, **options).steps < _sar_steps(options, _prompt_lengths(ids, mask))

"""``block_generate(response=...)``: fixed response tokens (docs/DESIGN.md §6, §8).

The reference loops take the same response canvas (``reference_loops._block_canvas``): fixed
tokens are committed before decoding, never candidates, never edited. Equality is token for
token and step for step against them, at the start of the response, in its middle, across a
block boundary and over a whole block.
"""

from __future__ import annotations

import pytest
import torch
from reference_loops import _block_logits, _greedy, llada2_reference, llada21_reference
from sampling_builders import MASK_ID, block_model, padded_prompts, random_prompt
from test_block_generate import EOS_ID, assert_published, grouped_experts_on_the_cpu, run

from mosa.sampling import block_generate

PROMPT, GEN, BLOCK = 5, 27, 8  # the response's slots 5..31: blocks 0 (part) to 3
# Response positions fixed (the block boundaries are at response positions 3, 11, 19).
FIXED = {
    "start": range(0, 3),
    "middle": range(13, 17),
    "across-a-boundary": range(9, 14),
    "a-whole-block": range(3, 11),
    "scattered": [0, 4, 11, 20, 26],
}
LLADA2 = dict(gen_length=GEN, block_length=BLOCK, steps=4, threshold=0.9)
LLADA21 = dict(gen_length=GEN, block_length=BLOCK, threshold=0.9, editing_threshold=0.5)


def canvas(positions, seed: int = 1, gen_length: int = GEN) -> torch.Tensor:
    """A response canvas ``int[G]``: random real tokens at ``positions``, masks elsewhere."""
    response = torch.full((gen_length,), MASK_ID)
    positions = list(positions)
    response[positions] = random_prompt(1, len(positions), seed=seed)[0]
    return response


def assert_fixed_kept(out, row: int, width: int, response: torch.Tensor) -> None:
    fixed = response != MASK_ID
    assert torch.equal(out.sequences[row, width:][fixed], response[fixed])
    assert (out.commit_step[row][fixed] == -1).all()


VERSIONS = {"llada2": (llada2_reference, LLADA2), "llada21": (llada21_reference, LLADA21)}


def decode_with_fixed(version: str, positions, cache):
    """``(model, out, response)``: one prompt decoded with ``positions`` fixed, checked
    against ``version``'s reference loop with the same canvas."""
    reference_loop, options = VERSIONS[version]
    model, prompt = block_model(), random_prompt(1, PROMPT, seed=4)[0]
    response = canvas(positions)
    out = run(model, prompt[None], cache=cache, response=response, stop_at_eos=False, **options)
    reference = reference_loop(
        model, prompt, mask_id=MASK_ID, eos_id=EOS_ID, response=response, **options
    )
    assert_published(out, 0, PROMPT, reference, EOS_ID)
    assert_fixed_kept(out, 0, PROMPT, response)
    return model, out, response


@pytest.mark.parametrize("cache", [None, "prefix"])
@pytest.mark.parametrize("positions", FIXED.values(), ids=FIXED.keys())
@pytest.mark.parametrize("version", VERSIONS)
def test_fixed_tokens_match_the_reference(version, positions, cache):
    decode_with_fixed(version, positions, cache)


def test_a_whole_fixed_block_runs_no_step():
    model, prompt = block_model(), random_prompt(1, PROMPT, seed=4)[0]
    plain = run(model, prompt[None], stop_at_eos=False, **LLADA2)
    fixed = run(model, prompt[None], response=canvas(FIXED["a-whole-block"]), **LLADA2)
    assert fixed.steps < plain.steps
    # Block 1 (response positions 3..10) commits nothing: no step number is skipped.
    assert set(fixed.commit_step[0].tolist()) - {-1} == set(range(fixed.steps))


@pytest.mark.parametrize("positions", FIXED.values(), ids=FIXED.keys())
def test_llada21_never_edits_fixed_tokens(positions):
    model, out, response = decode_with_fixed("llada21", positions, "prefix")
    # The editing rule would have replaced a fixed token had it been decoded: the model
    # predicts another token there above the editing threshold.
    x = out.sequences[0]
    fixed = (response != MASK_ID).nonzero()[:, 0] + PROMPT
    replaced = False  # a token the model would replace
    for block in sorted({int(p) // BLOCK for p in fixed}):
        end = (block + 1) * BLOCK
        with torch.no_grad():
            token, confidence = _greedy(_block_logits(model, x, end, BLOCK))
        for p in (int(p) for p in fixed if int(p) // BLOCK == block):
            offset = p - block * BLOCK
            replaced |= bool(token[offset] != x[p]) and float(confidence[offset]) > 0.5
    assert replaced


@pytest.mark.parametrize("cache", [None, "prefix"])
@pytest.mark.parametrize("options", [LLADA2, LLADA21], ids=["llada2", "llada21"])
def test_a_left_padded_batch_with_fixed_tokens_decodes_each_row_as_alone(options, cache):
    """Rows of different lengths are shifted by different amounts: each one's fixed tokens
    move with it."""
    model, lengths = block_model(), [3, 8, 13, 17, 5]
    ids, mask = padded_prompts(lengths, seed=3)
    width, gen_length = ids.shape[1], 20
    options = dict(options, gen_length=gen_length)
    spots = [[0, 1], [5, 6, 7, 8], range(8, 16), [19], [2, 10, 11]]
    responses = torch.stack(
        [canvas(p, seed=row, gen_length=gen_length) for row, p in enumerate(spots)]
    )
    out = run(model, ids, mask, cache=cache, response=responses, stop_at_eos=False, **options)
    for row, length in enumerate(lengths):
        alone = run(
            model, ids[row : row + 1, -length:], cache=cache, response=responses[row],
            stop_at_eos=False, **options,
        )  # fmt: skip
        assert torch.equal(out.sequences[row, width:], alone.sequences[0, length:]), row
        assert torch.equal(out.commit_step[row], alone.commit_step[0]), row
        assert_fixed_kept(out, row, width, responses[row])


@pytest.mark.parametrize("options", [LLADA2, LLADA21], ids=["llada2", "llada21"])
def test_the_prefix_cache_with_fixed_tokens_gives_the_uncached_result(options):
    ids, mask = padded_prompts([4, 9, 15], seed=8)
    response = canvas([1, 2, 9, 10, 11, 12, 25])
    kw = dict(response=response, stop_at_eos=False, **options)
    cached = run(block_model(), ids, mask, cache="prefix", **kw)
    uncached = run(block_model(), ids, mask, cache=None, **kw)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert torch.equal(cached.commit_step, uncached.commit_step)
    assert cached.steps == uncached.steps


def test_cuda_graphs_with_fixed_tokens_replay_the_eager_steps(monkeypatch):
    from sampling_builders import replay_graphs_eagerly

    twin = replay_graphs_eagerly(monkeypatch)
    grouped_experts_on_the_cpu(monkeypatch)
    model = block_model()
    ids, mask = padded_prompts([3, 8, 13], seed=3)
    kw = dict(mask_id=MASK_ID, eos_id=EOS_ID, return_trace=True, **LLADA2)
    responses = torch.stack([canvas(FIXED[k], seed=i) for i, k in enumerate(FIXED) if i < 3])
    eager = block_generate(model, ids, mask, cuda_graphs=False, response=responses, **kw)
    for _ in range(2):
        graphed = block_generate(model, ids, mask, cuda_graphs=True, response=responses, **kw)
        assert torch.equal(graphed.sequences, eager.sequences)
        assert torch.equal(graphed.commit_step, eager.commit_step)
    assert twin.captures > 0
    # The same graphs decode another canvas (the fixed tokens are the state's, not frozen).
    other = torch.stack([canvas(FIXED["scattered"], seed=9)] * 3)
    eager = block_generate(model, ids, mask, cuda_graphs=False, response=other, **kw)
    graphed = block_generate(model, ids, mask, cuda_graphs=True, response=other, **kw)
    assert torch.equal(graphed.sequences, eager.sequences)


def test_a_badly_shaped_response_is_refused():
    with pytest.raises(ValueError, match="response must be shaped"):
        run(block_model(), random_prompt(1, 5), response=torch.full((3,), MASK_ID), **LLADA2)

"""The tiny models' trainer: the block-diffusion SFT objective against a float64 reference, and
runs reproduced bitwise from the seed."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import mosa.tiny
from mosa.models import build_model
from mosa.tiny import corpus, evaluate, train
from mosa.tiny.tokenizer import build_tokenizer

pytestmark = pytest.mark.tiny_model
BLOCK = train.BLOCK_LENGTH


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(corpus.all_texts(seed=0))


def small_block_model(tokenizer, dtype=torch.float32):
    config = dict(
        train.model_config(tokenizer, "llada2"),
        hidden_size=48, head_dim=12, num_hidden_layers=3, intermediate_size=40,
        moe_intermediate_size=24,
    )  # fmt: skip
    return build_model(config, device="cpu", dtype=dtype, seed=3)


def reference_block_loss(model, tokenizer, prompts, response, draw) -> float:
    """Row by row, unpadded, float64: the whole sequence (prompt, response, EOS fill, then
    random tokens up to two blocks past the chosen one, which block-causal attention must
    hide), the chosen block's response tokens masked where the draw says."""
    total = 0.0
    random_tokens = torch.Generator().manual_seed(11)
    for i, prompt in enumerate(prompts):
        block = int(draw.block[i])
        start, end = block * BLOCK, (block + 1) * BLOCK
        sequence = [*prompt, *response[i].tolist()] + [tokenizer.eos_token_id] * BLOCK
        clean = torch.tensor(sequence[:end])
        later = torch.randint(len(tokenizer), (2 * BLOCK,), generator=random_tokens)
        ids = torch.cat([clean, later])
        for j in range(BLOCK):
            if start + j >= len(prompt) and draw.uniform[i, j] < draw.t[i, 0]:
                ids[start + j] = tokenizer.mask_token_id
        logits = model(ids[None], block_length=BLOCK, return_logits=True).logits[0]
        log_probs = torch.log_softmax(logits.double(), dim=-1)
        for j in range(BLOCK):
            if ids[start + j] == tokenizer.mask_token_id:
                total -= log_probs[start + j, clean[start + j]].item() / draw.t[i, 0].item()
    return total / (len(prompts) * BLOCK)


def test_block_sft_loss_matches_float64_reference(tokenizer):
    model = small_block_model(tokenizer)
    reference_model = small_block_model(tokenizer, torch.float64)
    reference_model.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    words = torch.Generator().manual_seed(5)
    # Odd prompt lengths (some ending a block exactly), a response not a multiple of a block.
    lengths = [3, 8, 13, 16, 21, 7]
    prompts = [torch.randint(7, len(tokenizer), (n,), generator=words).tolist() for n in lengths]
    response = torch.randint(7, len(tokenizer), (len(lengths), 13), generator=words)
    eos_at = torch.tensor([12, 0, 5, 9, 3, 8])
    for row, at in enumerate(eos_at.tolist()):
        response[row, at:] = tokenizer.eos_token_id
    assert torch.equal(train.first_eos(response, tokenizer.eos_token_id), eos_at)
    loss = train.block_sft_loss(
        model, tokenizer, prompts, response, torch.Generator().manual_seed(2)
    )
    draw = train.BlockDraw.draw(torch.tensor(lengths), eos_at, torch.Generator().manual_seed(2))
    expected = reference_block_loss(reference_model, tokenizer, prompts, response, draw)
    assert expected > 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_block_draw_covers_the_blocks_the_sampler_decodes():
    # From the block of the first response position to the block of the first EOS.
    lengths = torch.tensor([3, 8, 13, 16]).repeat_interleave(500)
    eos_at = torch.tensor([13, 0, 2, 39]).repeat_interleave(500)
    draw = train.BlockDraw.draw(lengths, eos_at, torch.Generator().manual_seed(0))
    for p, e in ((3, 13), (8, 0), (13, 2), (16, 39)):
        drawn = set(draw.block[lengths == p].tolist())
        assert drawn == set(range(p // BLOCK, (p + e) // BLOCK + 1)), p
    assert bool((draw.t > 0).all()) and bool((draw.t <= 1).all())


def test_first_eos_refuses_a_response_without_eos(tokenizer):
    with pytest.raises(ValueError, match="EOS padding"):
        train.first_eos(torch.tensor([[7, 8], [7, tokenizer.eos_token_id]]), tokenizer.eos_token_id)


def test_block_batch_left_pads_by_whole_blocks(tokenizer):
    prompts = [[9] * 3, [10] * 13]
    response = torch.full((2, 10), 11)
    draw = train.BlockDraw(
        t=torch.ones(2, 1), block=torch.tensor([1, 1]), uniform=torch.zeros(2, BLOCK)
    )
    ids, attention, targets, masked = train.block_batch(tokenizer, prompts, response, draw)
    assert ids.shape == (2, 2 * BLOCK) and attention.tolist() == [[1] * 16, [1] * 16]
    eos, mask = tokenizer.eos_token_id, tokenizer.mask_token_id
    assert targets.tolist() == [[11] * 5 + [eos] * 3, [10] * 5 + [11] * 3]
    assert masked.tolist() == [[True] * 8, [False] * 5 + [True] * 3]
    assert ids[:, -BLOCK:].tolist() == [[mask] * 8, [10] * 5 + [mask] * 3]
    assert ids[:, :BLOCK].tolist() == [[9] * 3 + [11] * 5, [10] * 8]
    draw = train.BlockDraw(t=draw.t, block=torch.tensor([0, 2]), uniform=draw.uniform)
    ids, attention, targets, _ = train.block_batch(tokenizer, prompts, response, draw)
    assert attention[0].tolist() == [0] * 16 + [1] * 8
    assert ids[0, :16].tolist() == [tokenizer.pad_token_id] * 16
    assert targets[1].tolist() == [11] * 7 + [eos]


@pytest.mark.parametrize("family", ["llada", "llada2"])
def test_training_is_reproduced_bitwise_from_the_seed(tmp_path, family):
    runs = []
    for name in ("a", "b"):
        train.train(
            tmp_path / name, seed=1, steps=3, batch_size=8, lr=1e-3, family=family,
            progress=False,
        )  # fmt: skip
        runs.append(load_file(tmp_path / name / "model.safetensors"))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    loaded = mosa.load_model(tmp_path / "a")
    assert type(loaded).__name__ == {"llada": "LLaDAModel", "llada2": "LLaDA2Model"}[family]


def test_families_agree_and_unknown_ones_are_refused():
    assert set(train.FAMILIES) == set(mosa.tiny.FOLDERS) == set(evaluate.FAMILY_DEFAULTS)
    assert mosa.tiny.path() == mosa.tiny.path("llada")
    with pytest.raises(ValueError, match="llada, llada2"):
        mosa.tiny.path("dream")
    with pytest.raises(ValueError, match="llada, llada2"):
        train.tiny_family("dream")
    with pytest.raises(ValueError, match="no tiny evaluation preset for a dream model"):
        evaluate.sampler_defaults(build_model("dream-7b", device="meta"))

"""Forward pass: padding, logits conventions, the K/V cache, gradient checkpointing."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import padded_batch

TOL = {"atol": 2e-5, "rtol": 1e-5}


@torch.no_grad()
def test_left_padded_row_equals_the_prompt_alone(model):
    ids, mask = padded_batch([6, 11, 9], total=11)
    batch = model(ids, mask).hidden_states
    for row in range(3):
        real = mask[row].bool()
        alone = model(ids[row : row + 1, real]).hidden_states[0]
        torch.testing.assert_close(batch[row, real], alone, **TOL)


@torch.no_grad()
def test_padding_is_masked_whatever_the_pad_tokens_are(model):
    ids, mask = padded_batch([5, 9], total=9)
    noisy = ids.clone()
    noisy[mask == 0] = torch.randint(0, 120, (int((mask == 0).sum()),))
    real = mask.bool()
    torch.testing.assert_close(
        model(ids, mask).hidden_states[real], model(noisy, mask).hidden_states[real], **TOL
    )


@torch.no_grad()
def test_logits_conventions(family, model):
    ids, mask = padded_batch([7, 7], total=7)
    out = model(ids, mask, return_logits=True)
    assert out.hidden_states.shape == (2, 7, model.get_input_embeddings().embedding_dim)
    per_position = out.hidden_states @ model.lm_head_weight.T
    if family != "dream":
        assert model.logits_shift == 0
        torch.testing.assert_close(out.logits, per_position)
    else:  # Dream: logits = cat([l[:, :1], l[:, :-1]]), as in its generation code
        assert model.logits_shift == 1
        torch.testing.assert_close(out.logits[:, 1:], per_position[:, :-1])
        torch.testing.assert_close(out.logits[:, 0], per_position[:, 0])
    assert model(ids).logits is None


@torch.no_grad()
@pytest.mark.parametrize(("start", "end"), [(0, 4), (8, 12), (12, 16)])
def test_dual_cache_block_equals_full_forward(model, start, end):
    ids, mask = padded_batch([16, 10, 13], total=16)
    full = model(ids, mask, return_cache=True)
    cache = full.cache
    assert cache.length == cache.capacity == 16 and len(cache.keys) == len(model.blocks)
    block = model(ids[:, start:end], cache=cache, start=start)
    assert block.cache is cache and cache.length == 16
    torch.testing.assert_close(block.hidden_states, full.hidden_states[:, start:end], **TOL)


@torch.no_grad()
def test_prefix_cache_slice_equals_full_forward(model):
    ids, mask = padded_batch([16, 12], total=16)
    cache = model(ids, mask, return_cache=True).cache
    suffix = model(ids[:, 8:], cache=cache, start=8)
    torch.testing.assert_close(suffix.hidden_states, model(ids, mask).hidden_states[:, 8:], **TOL)


@torch.no_grad()
def test_truncated_cache_sees_only_the_prefix_and_the_block(model):
    ids, mask = padded_batch([16, 11], total=16)
    cache = model(ids, mask, return_cache=True).cache
    shorter = model(ids[:, :10], mask[:, :10], return_cache=True)
    for layer, (keys, values) in enumerate(
        zip(shorter.cache.keys, shorter.cache.values, strict=True)
    ):
        cache.keys[layer][:, :10] = keys
        cache.values[layer][:, :10] = values
    cache.truncate(6)  # slots 10.. still hold the 16-token run: they must not be attended to
    block = model(ids[:, 6:10], cache=cache, start=6)
    assert cache.length == 10
    torch.testing.assert_close(block.hidden_states, shorter.hidden_states[:, 6:10], **TOL)


@torch.no_grad()
def test_block_keys_are_overwritten_with_fresh_ones(model):
    ids, mask = padded_batch([12, 9], total=12)
    cache = model(ids, mask, return_cache=True).cache
    changed = ids.clone()
    changed[:, 4:8] = model.mask_token_id
    model(changed[:, 4:8], cache=cache, start=4)
    fresh = model(changed, mask, return_cache=True).cache
    # Layer 0's keys depend only on the token and its position.
    torch.testing.assert_close(cache.keys[0], fresh.keys[0], **TOL)
    torch.testing.assert_close(cache.values[0][:, 4:8], fresh.values[0][:, 4:8], **TOL)


@torch.no_grad()
def test_cache_misuse_is_refused(family, model):
    ids, mask = padded_batch([8, 8], total=8)
    cache = model(ids, mask, return_cache=True).cache
    with pytest.raises(ValueError, match="past the cache capacity"):
        model(ids[:, :4], cache=cache, start=6)
    with pytest.raises(TypeError, match="start must be an int"):
        model(ids[:, :4], cache=cache)
    with pytest.raises(ValueError, match="attention_mask is taken from the cache"):
        model(ids[:, :4], mask[:, :4], cache=cache, start=0)
    cache.truncate(2)
    with pytest.raises(ValueError, match="no slot is left unwritten"):
        model(ids[:, 4:6], cache=cache, start=4)
    with pytest.raises(ValueError, match="attention_mask must have input_ids' shape"):
        model(ids, mask[:, :5])
    if family == "dream":
        with pytest.raises(ValueError, match="run the slice from start - 1"):
            model(ids[:, 2:4], cache=cache, start=2, return_logits=True)


@torch.no_grad()
def test_inputs_embeds_equal_input_ids(model):
    ids, mask = padded_batch([7, 4], total=7)
    embeds = model.get_input_embeddings()(ids)
    by_ids = model(ids, mask, return_logits=True)
    by_embeds = model(attention_mask=mask, inputs_embeds=embeds, return_logits=True)
    torch.testing.assert_close(by_embeds.hidden_states, by_ids.hidden_states, **TOL)
    torch.testing.assert_close(by_embeds.logits, by_ids.logits, **TOL)
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model(ids, inputs_embeds=embeds)
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model(attention_mask=mask)
    with pytest.raises(ValueError, match="embedding width"):
        model(inputs_embeds=embeds[..., :-1])
    with pytest.raises(TypeError, match="like the model"):
        model(inputs_embeds=embeds.double())
    with pytest.raises(ValueError, match="attention_mask must have inputs_embeds' shape"):
        model(attention_mask=mask[:, :5], inputs_embeds=embeds)


def test_inputs_embeds_carry_gradients(model):
    ids, _ = padded_batch([5], total=5)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    model(inputs_embeds=embeds).hidden_states.sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients(model):
    ids, mask = padded_batch([9, 6], total=9)
    model.train()

    def grads():
        model.zero_grad()
        model(ids, mask, return_logits=True).logits.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.gradient_checkpointing_enable()
    checkpointed = grads()
    model.gradient_checkpointing_disable()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("family", ["llada2"])
def test_block_causal_attention_sees_its_block_and_the_earlier_ones(model):
    """LLaDA2's block diffusion: changing block 2's tokens changes blocks 2 and 3 only."""
    ids, mask = padded_batch([12, 9], total=12)
    changed = ids.clone()
    changed[:, 8:10] = model.mask_token_id
    before = model(ids, mask, block_length=4).hidden_states
    after = model(changed, mask, block_length=4).hidden_states
    torch.testing.assert_close(after[:, :8], before[:, :8], **TOL)
    assert not torch.allclose(after[:, 10:], before[:, 10:], atol=1e-3)
    bidirectional = model(changed, mask).hidden_states
    assert not torch.allclose(bidirectional[:, :8], before[:, :8], atol=1e-3)


@torch.no_grad()
@pytest.mark.parametrize("family", ["llada2"])
def test_block_causal_row_padded_by_whole_blocks_equals_the_row_alone(model):
    """Blocks count from slot 0 and rotary positions from the first real token: a row left
    padded by a multiple of block_length is the row alone."""
    ids, mask = padded_batch([12, 4], total=12)
    batch = model(ids, mask, block_length=4).hidden_states
    alone = model(ids[1:, 8:], block_length=4).hidden_states
    torch.testing.assert_close(batch[1, 8:], alone[0], **TOL)


@torch.no_grad()
@pytest.mark.parametrize("family", ["llada2"])
def test_block_causal_prefix_cache_slice_equals_the_full_forward(model):
    ids, mask = padded_batch([16, 11], total=16)
    run = model(ids, mask, return_cache=True, block_length=4)
    full, cache = run.hidden_states, run.cache
    for start in (4, 12, 8):  # truncate(start): the slots from start on are not attended to
        cache.truncate(start)
        block = model(ids[:, start : start + 4], cache=cache, start=start, block_length=4)
        torch.testing.assert_close(block.hidden_states, full[:, start : start + 4], **TOL)

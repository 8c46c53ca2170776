"""The objective on the MoE families: LLaDA2 (block-causal, on ``block_generate``'s canvas) and
LLaDA-MoE (bidirectional), fused against the plain reference, every defense. The models and
the plain reference run in float64; the fused head ops compute in float32 by design (§4.3),
which sets the tolerances."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from test_objective import forwards, fused_and_plain  # noqa: E402
from tiny_checkpoints import lora_model, padded_batch  # noqa: E402

from mosa.align import AlignBatch, mosa_terms  # noqa: E402
from mosa.align.defenses import INITIAL_ALIGNMENT_WINDOW  # noqa: E402
from mosa.align.objective import (  # noqa: E402
    IGNORE,
    EosBatch,
    a2d_terms,
    lay_out_blocks,
    response_hidden,
    run_forward,
)
from mosa.align.reference import reference_a2d_terms  # noqa: E402
from mosa.align.trainer import block_length_for  # noqa: E402
from mosa_kernels import token_logprobs  # noqa: E402

pytest.importorskip("peft")

MASK_ID, PAD_ID, EOS_ID = 126, 125, 125
GEN_LENGTH = 23  # not a multiple of 3 or 8: the last block runs past the response
PROMPTS = [5, 9, 2]  # first blocks differ under block length 3 and 8: rows are shifted
WINDOW = (4, 13)


def _double_lora(family: str):
    base, model = lora_model(family)
    return base, model.double()


def _canvas(committed: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = padded_batch(PROMPTS, total=max(PROMPTS), seed=seed)
    response = torch.full((len(PROMPTS), GEN_LENGTH), MASK_ID)
    if committed:  # harmful pieces already in the canvas (a2d / anywhere)
        response[0, 3:6] = torch.tensor([20, 21, 22])
        response[1, 10:12] = torch.tensor([30, 31])
        response[2, 17:20] = torch.tensor([40, 41, 42])
    mask = torch.cat([mask, torch.ones_like(response)], dim=1).bool()
    return torch.cat([ids, response], dim=1), mask


def _sentences():
    positive = torch.tensor([[7, 8, 9, 125], [11, 12, 125, IGNORE], [40, 125, IGNORE, IGNORE]])
    negative = torch.tensor([[3, 4, 5, 6, 7], [99, 98, IGNORE, IGNORE, IGNORE], [1, 2, 3, 4, 5]])
    return positive, negative


def _mosa_batch(defense: str) -> tuple[AlignBatch, tuple[int, int]]:
    positive, negative = _sentences()
    if defense in ("mosa", "initial_alignment"):
        ids, mask = _canvas(committed=False)
        window = INITIAL_ALIGNMENT_WINDOW if defense == "initial_alignment" else WINDOW
        return AlignBatch(ids, mask, GEN_LENGTH, positive, negative), window
    ids, mask = _canvas(committed=True)
    free = ids[:, -GEN_LENGTH:] == MASK_ID
    # The anywhere rows' own windows, over still-masked offsets only.
    allowed = torch.zeros(len(PROMPTS), GEN_LENGTH, dtype=torch.bool)
    for row, (first, last) in enumerate([(0, 10), (6, 18), (2, 15)]):
        allowed[row, first : last + 1] = True
    allowed_plus, allowed_minus = allowed & free, allowed & free
    batch = AlignBatch(ids, mask, GEN_LENGTH, positive, negative, allowed_plus, allowed_minus)
    return batch, (0, GEN_LENGTH - 1)


def _eos_batch() -> EosBatch:
    ids, mask = _canvas(committed=True)
    targets = torch.full((len(PROMPTS), GEN_LENGTH), IGNORE)
    targets[0, 6:] = EOS_ID
    targets[1, 9:10] = EOS_ID
    targets[2, 12:17] = EOS_ID
    return EosBatch(ids, mask, GEN_LENGTH, targets)


CASES = [("llada2", 3), ("llada2", 8), ("llada_moe", None)]


def _laid_out(batch, block_length):
    return batch if block_length is None else lay_out_blocks(batch, block_length, MASK_ID, PAD_ID)


@pytest.mark.parametrize(("family", "block_length"), CASES)
@pytest.mark.parametrize("defense", ["mosa", "initial_alignment", "anywhere"])
def test_fused_objective_matches_the_plain_one_on_the_moe_families(family, block_length, defense):
    base, model = _double_lora(family)
    batch, window = _mosa_batch(defense)
    batch = _laid_out(batch, block_length)
    if block_length is not None:  # the rows really are shifted, by different amounts
        assert len(set(batch.response_start.tolist())) > 1
        assert not batch.attention_mask.all()
    fused, fused_grads, plain, plain_grads = fused_and_plain(base, model, batch, window)

    for name in ("reward_plus", "reward_minus", "kl"):
        got, want = getattr(fused, name).double(), getattr(plain, name)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
    assert fused.kl.min() > 1e-3
    assert torch.equal(fused.best_plus, plain.best_plus)
    assert torch.equal(fused.best_minus, plain.best_minus)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert any(g.abs().max() > 1e-4 for g in fused_grads)


@pytest.mark.parametrize(("family", "block_length"), CASES)
def test_fused_a2d_matches_the_plain_one_on_the_moe_families(family, block_length):
    base, model = _double_lora(family)
    policy, _, policy_logits, _ = forwards(model)
    batch = _laid_out(_eos_batch(), block_length)
    lora = [p for p in model.parameters() if p.requires_grad]
    head = (base.lm_head_weight, base.lm_head_bias)
    fused = a2d_terms(policy, head, base.logits_shift, batch)
    fused_grads = torch.autograd.grad(fused.loss(0.05).sum(), lora)
    plain = reference_a2d_terms(policy_logits, batch)
    plain_grads = torch.autograd.grad(plain.loss(0.05).sum(), lora)
    torch.testing.assert_close(fused.reward_plus.double(), plain.reward_plus, rtol=1e-5, atol=1e-5)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert any(g.abs().max() > 1e-4 for g in fused_grads)


def test_the_layout_moves_committed_tokens_with_their_row():
    batch = lay_out_blocks(_eos_batch(), 8, MASK_ID, PAD_ID)
    want = _eos_batch().input_ids[:, -GEN_LENGTH:]
    got = batch.input_ids.gather(1, batch.response_slots())
    assert torch.equal(got, want)
    # Each row's prompt ends where its response starts; the slots left of a row are invalid.
    for row, start in enumerate(batch.response_start.tolist()):
        assert start % 8 == PROMPTS[row] % 8
        assert not batch.attention_mask[row, : start - PROMPTS[row]].any()
        assert batch.attention_mask[row, start - PROMPTS[row] :].all()


def test_block_causal_scores_differ_from_bidirectional_ones():
    base, model = _double_lora("llada2")
    policy, reference, _, _ = forwards(model)
    batch, window = _mosa_batch("mosa")
    head = (base.lm_head_weight, base.lm_head_bias)
    bidirectional = mosa_terms(policy, reference, head, 0, batch, window)
    blocks = mosa_terms(policy, reference, head, 0, _laid_out(batch, 8), window)
    assert (blocks.reward_plus - bidirectional.reward_plus).abs().min() > 1e-3


@pytest.mark.parametrize("block_length", [3, 8])
def test_a_score_in_block_b_ignores_the_tokens_of_later_blocks(block_length):
    base, model = _double_lora("llada2")
    policy, _, _, _ = forwards(model)
    batch = _laid_out(_mosa_batch("mosa")[0], block_length)
    targets = batch.positive[:, None, :1].expand(-1, GEN_LENGTH, -1)

    def scores(canvas):
        with torch.no_grad():
            hidden = response_hidden(run_forward(policy, canvas), canvas, 0)
            return token_logprobs(hidden, base.lm_head_weight, targets, bias=base.lm_head_bias)[
                ..., 0
            ]

    before = scores(batch)
    slots = batch.response_slots()
    row, j = 1, 10  # response position 10 of row 1
    block_end = (int(slots[row, j]) // block_length + 1) * block_length
    changed = batch.input_ids.clone()
    generator = torch.Generator().manual_seed(9)
    changed[row, block_end:] = torch.randint(
        0, 120, (changed.shape[1] - block_end,), generator=generator
    )
    after = scores(type(batch)(**{**vars(batch), "input_ids": changed}))
    seen = slots[row] < block_end
    assert torch.equal(after[row, seen], before[row, seen])  # this block and earlier ones
    assert (after[row, ~seen] - before[row, ~seen]).abs().max() > 1e-6  # later ones moved
    assert torch.equal(after[[0, 2]], before[[0, 2]])  # the other rows are untouched


def test_block_length_goes_with_block_diffusion_models_only():
    llada2, _ = lora_model("llada2")
    assert block_length_for(llada2, None) == 32  # the sampler's default
    assert block_length_for(llada2, 4) == 4
    llada_moe, _ = lora_model("llada_moe")
    assert block_length_for(llada_moe, None) is None
    with pytest.raises(ValueError, match="block_length=4 is for block-diffusion models"):
        block_length_for(llada_moe, 4)

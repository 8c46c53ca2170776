"""The fused MOSA objective against the straightforward one (full logits, explicit loops)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_checkpoints import lora_model, padded_batch  # noqa: E402

from mosa.align import AlignBatch, mosa_terms, reference_terms  # noqa: E402
from mosa.align.objective import IGNORE, check_window, score_window  # noqa: E402

pytest.importorskip("peft")

MASK_ID = 126
GEN_LENGTH = 23
WINDOW = (4, 13)


def _batch(seed: int = 0) -> AlignBatch:
    ids, mask = padded_batch([5, 9, 2], total=9, seed=seed)
    canvas = torch.full((3, GEN_LENGTH), MASK_ID)
    mask = torch.cat([mask, torch.ones_like(canvas)], dim=1).bool()
    positive = torch.tensor([[7, 8, 9, 125], [11, 12, 125, IGNORE], [40, 125, IGNORE, IGNORE]])
    negative = torch.tensor([[3, 4, 5, 6, 7], [99, 98, IGNORE, IGNORE, IGNORE], [1, 2, 3, 4, 5]])
    return AlignBatch(torch.cat([ids, canvas], dim=1), mask, GEN_LENGTH, positive, negative)


def forwards(model):
    """``(policy, reference, policy_logits, reference_logits)`` of a peft model (keywords such
    as ``block_length`` are passed on)."""

    def policy(ids, mask, **kw):
        return model(ids, mask, **kw).hidden_states

    def reference(ids, mask, **kw):
        with model.disable_adapter():
            return model(ids, mask, **kw).hidden_states

    def policy_logits(ids, mask, **kw):
        return model(ids, mask, return_logits=True, **kw).logits

    def reference_logits(ids, mask, **kw):
        with model.disable_adapter():
            return model(ids, mask, return_logits=True, **kw).logits

    return policy, reference, policy_logits, reference_logits


def fused_and_plain(base, model, batch, window):
    """``(fused, its LoRA gradients, plain, its LoRA gradients)``: ``mosa_terms`` and
    ``reference_terms`` of ``batch`` and the gradients of their loss at beta 0.05."""
    policy, reference, policy_logits, reference_logits = forwards(model)
    head = (base.lm_head_weight, base.lm_head_bias)
    lora = [p for p in model.parameters() if p.requires_grad]
    fused = mosa_terms(policy, reference, head, base.logits_shift, batch, window)
    fused_grads = torch.autograd.grad(fused.loss(0.05).sum(), lora)
    plain = reference_terms(policy_logits, reference_logits, batch, window)
    plain_grads = torch.autograd.grad(plain.loss(0.05).sum(), lora)
    return fused, fused_grads, plain, plain_grads


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("window", [WINDOW, (0, 0), (15, 40)])
def test_fused_objective_matches_reference_and_its_gradients(family, window):
    base, model = lora_model(family)
    fused, fused_grads, plain, plain_grads = fused_and_plain(base, model, _batch(), window)

    for name in ("reward_plus", "reward_minus", "kl"):
        torch.testing.assert_close(
            getattr(fused, name), getattr(plain, name), rtol=1e-4, atol=1e-4, msg=name
        )
    assert fused.kl.min() > 1e-3  # the LoRA moves the policy: the KL term is exercised
    assert torch.equal(fused.best_plus, plain.best_plus)
    assert torch.equal(fused.best_minus, plain.best_minus)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
    assert any(g.abs().max() > 1e-4 for g in fused_grads)


def test_only_the_best_offset_gets_gradient():
    base, model = lora_model("llada")
    batch = _batch(seed=1)
    hidden = model(batch.input_ids, batch.attention_mask).hidden_states[:, -GEN_LENGTH:]
    hidden = hidden.detach().requires_grad_(True)
    reward_plus, _, best_plus, _ = score_window(hidden, base.lm_head_weight, None, batch, WINDOW)
    (grad,) = torch.autograd.grad(reward_plus.sum(), hidden)
    touched = grad.abs().sum(dim=-1) > 0
    lengths = (batch.positive != IGNORE).sum(dim=1)
    for row in range(3):
        expected = torch.zeros(GEN_LENGTH, dtype=torch.bool)
        expected[best_plus[row] : best_plus[row] + lengths[row]] = True
        assert torch.equal(touched[row], expected), row


def test_offsets_past_the_canvas_are_never_chosen():
    base, model = lora_model("llada")
    batch = _batch(seed=2)
    # Row 0's negative sentence has 5 tokens: offsets above GEN_LENGTH - 5 do not fit.
    terms = mosa_terms(
        lambda i, m: model(i, m).hidden_states,
        lambda i, m: model(i, m).hidden_states.detach(),
        (base.lm_head_weight, None),
        0,
        batch,
        (10, 30),
    )
    lengths = (batch.negative != IGNORE).sum(dim=1)
    assert torch.all(terms.best_minus + lengths <= GEN_LENGTH)
    assert torch.all(terms.best_minus >= 10)
    assert torch.isfinite(terms.reward_minus).all()


def test_window_that_does_not_fit_is_a_clear_error():
    with pytest.raises(ValueError, match="overruns gen_length=23"):
        check_window((20, 30), 23, 5)
    with pytest.raises(ValueError, match="0 <= first <= last"):
        check_window((5, 2), 23, 5)

"""The Monte-Carlo masked log-likelihood of the lm-eval adapter (LLaDA's estimator)."""

from __future__ import annotations

import pytest
import torch

from mosa.lm_eval.likelihood import mask_counts, masked_loglikelihood, random_masks
from mosa.models import DREAM_7B, LLADA_8B, build_model

pytest.importorskip("lm_eval")

SMALL = {
    "llada": dict(
        LLADA_8B, d_model=32, n_heads=2, n_kv_heads=2, n_layers=1, mlp_hidden_size=48,
        vocab_size=40, embedding_size=40, mask_token_id=39, eos_token_id=38, pad_token_id=38,
    ),
    "dream": dict(
        DREAM_7B, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
        num_hidden_layers=1, intermediate_size=48, vocab_size=40, mask_token_id=39,
        pad_token_id=38, eos_token_id=38, bos_token_id=38,
    ),
}  # fmt: skip
MASK_ID = 39


def _model(family: str):
    model = build_model(SMALL[family], device="cpu", dtype=torch.float32, seed=3)
    with torch.no_grad():  # larger weights than the default init: far-from-uniform logits
        for param in model.parameters():
            if param.dim() == 2:
                param.mul_(25)
    return model.eval()


def test_mask_counts_are_llada_s_stratified_ratios():
    generator = torch.Generator().manual_seed(0)
    for target_length, batch in ((8, 4), (5, 5), (3, 8), (1, 4)):
        counts = mask_counts(target_length, batch, generator)
        assert counts.min() >= 1 and counts.max() <= target_length
        # Consecutive samples are target_length / batch apart (mod target_length).
        step = target_length / batch
        expected = torch.round(counts[0] + step * torch.arange(batch)).long()
        assert torch.equal(counts, (expected - 1) % target_length + 1)


def test_random_masks_mask_exactly_the_counts_at_random_places():
    generator = torch.Generator().manual_seed(0)
    counts = torch.tensor([1, 3, 6, 3])
    masks = torch.stack([random_masks(counts, 6, generator) for _ in range(20)])
    assert torch.equal(masks.sum(dim=2), counts.expand(20, -1))
    assert bool(masks[:, 0].any(dim=0).all())  # a single masked token falls anywhere


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_a_one_token_continuation_gets_its_exact_log_probability(family):
    model = _model(family)
    prefix, target = torch.tensor([5, 9, 2, 17]), torch.tensor([23])
    estimate = masked_loglikelihood(
        model, prefix, target, mask_id=MASK_ID, mc_num=4, batch_size=2,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    masked = torch.cat([prefix, torch.tensor([MASK_ID])])[None]
    with torch.no_grad():
        logits = model(masked, return_logits=True).logits  # Dream's already shifted
    exact = torch.log_softmax(logits[0, -1].double(), dim=-1)[23].item()
    assert estimate == pytest.approx(exact, abs=1e-4)


def test_the_estimate_is_the_importance_weighted_mean_over_samples():
    """Two tokens: each sample masks one (weight 2) or both (weight 1); the estimate is the
    average of those weighted sums, so it lies between their extremes and repeats by seed."""
    model = _model("llada")
    prefix, target = torch.tensor([5, 9]), torch.tensor([23, 7])
    sequence = torch.cat([prefix, target])

    def logp(masked_positions):
        x = sequence.clone()
        x[masked_positions] = MASK_ID
        with torch.no_grad():
            logits = model(x[None], return_logits=True).logits[0].double()
        return [torch.log_softmax(logits[p], -1)[sequence[p]].item() for p in masked_positions]

    first, second, both = 2 * logp([2])[0], 2 * logp([3])[0], sum(logp([2, 3]))
    # batch 2: one sample masks one token, the other both; k picks which one at random.
    expected = [(first + both) / 2, (second + both) / 2]
    estimate = masked_loglikelihood(
        model, prefix, target, mask_id=MASK_ID, mc_num=2, batch_size=2,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert min(abs(estimate - e) for e in expected) < 1e-4


def test_bad_monte_carlo_settings_are_refused():
    with pytest.raises(ValueError, match="mc_num \\(6\\) must be a positive multiple"):
        masked_loglikelihood(
            _model("llada"), torch.tensor([1]), torch.tensor([2]), mask_id=MASK_ID, mc_num=6,
            batch_size=4, generator=torch.Generator(),
        )  # fmt: skip

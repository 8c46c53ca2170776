"""The trained defenses beside MOSA: A2D's and ours' (``anywhere``) canvases, their objective
terms against plain references, and the trainer and CLI running them."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_checkpoints import lora_model, padded_batch  # noqa: E402

import mosa.tiny  # noqa: E402
from mosa.align import AlignBatch, AlignConfig, mosa_terms, reference_terms, train  # noqa: E402
from mosa.align.canvases import MAX_PIECES, a2d_canvas, anywhere_canvas  # noqa: E402
from mosa.align.objective import IGNORE, EosBatch, a2d_terms  # noqa: E402
from mosa.cli import main  # noqa: E402

pytest.importorskip("peft")

HARMFUL = [[11, 12, 13, 14, 15], [21, 22], [31, 32, 33, 34, 35, 36, 37]]
GEN_LENGTH = 30


@pytest.mark.parametrize("seed", range(40))
def test_anywhere_canvas_places_sentences_only_over_masked_positions(seed):
    draw = random.Random(seed)
    width, lengths = 6, (4, 7)
    canvas, plus, minus = anywhere_canvas(draw, GEN_LENGTH, width, lengths, HARMFUL)
    assert len(canvas) == len(plus) == len(minus) == GEN_LENGTH
    committed = [t for t in canvas if t is not None]
    assert all(any(t in piece for piece in HARMFUL) for t in committed)
    for allowed, length in ((plus, lengths[0]), (minus, lengths[1])):
        starts = [k for k, ok in enumerate(allowed) if ok]
        assert starts, "every row keeps an offset for each sentence"
        for k in starts:
            assert k + length <= GEN_LENGTH
            assert all(t is None for t in canvas[k : k + length]), (k, canvas)


def test_anywhere_canvas_commits_pieces_in_most_rows_and_repeats_under_a_seed():
    rows = [anywhere_canvas(random.Random(s), GEN_LENGTH, 6, (4, 7), HARMFUL) for s in range(200)]
    with_pieces = sum(any(t is not None for t in canvas) for canvas, _, _ in rows)
    assert 0.6 * 200 < with_pieces < 0.9 * 200  # COMMIT_SHARE is 0.75
    again = [anywhere_canvas(random.Random(s), GEN_LENGTH, 6, (4, 7), HARMFUL) for s in range(200)]
    assert rows == again
    # Each row's refusal may go in one window of width + 1 offsets (the whole canvas only when
    # committed pieces leave that window no room), and the windows fall all over the canvas.
    spans = [[k for k, ok in enumerate(plus) if ok] for _, plus, _ in rows]
    assert sum(max(s) - min(s) <= 6 for s in spans) >= 0.7 * len(rows)
    firsts = {s[0] for s in spans}
    assert min(firsts) == 0 and max(firsts) >= GEN_LENGTH - 7 - 6


@pytest.mark.parametrize("seed", range(40))
def test_a2d_canvas_supervises_the_masked_positions_of_the_continuation(seed):
    canvas, target = a2d_canvas(random.Random(seed), GEN_LENGTH, HARMFUL)
    committed = [j for j, t in enumerate(canvas) if t is not None]
    targeted = [j for j, t in enumerate(target) if t]
    assert targeted, "at least one position is masked and supervised"
    start = min(committed + targeted)
    # EOS from the continuation's start on, wherever the canvas is masked; nothing before it.
    assert targeted == [j for j in range(start, GEN_LENGTH) if canvas[j] is None]
    span = sum(len(p) for p in HARMFUL)
    assert len(committed) < span and all(t in sum(HARMFUL, []) for t in canvas if t)
    assert len(canvas) == GEN_LENGTH
    assert a2d_canvas(random.Random(seed), GEN_LENGTH, HARMFUL) == (canvas, target)
    assert MAX_PIECES >= 1


def test_anywhere_objective_skips_disallowed_offsets_as_the_reference_does():
    base, model = lora_model("llada")
    gen_length, mask_id = 23, 126
    ids, mask = padded_batch([5, 9, 2], total=9, seed=4)
    canvas = torch.full((3, gen_length), mask_id)
    canvas[0, 3:6] = torch.tensor([50, 51, 52])  # committed pieces, as anywhere_canvas writes
    mask = torch.cat([mask, torch.ones_like(canvas)], dim=1).bool()
    positive = torch.tensor([[7, 8, 9, 125], [11, 12, 125, IGNORE], [40, 125, IGNORE, IGNORE]])
    negative = torch.tensor([[3, 4, 5, 6, 7], [99, 98, IGNORE, IGNORE, IGNORE], [1, 2, 3, 4, 5]])
    generator = torch.Generator().manual_seed(9)
    allowed_plus = torch.rand(3, gen_length, generator=generator) < 0.4
    allowed_minus = torch.rand(3, gen_length, generator=generator) < 0.4
    allowed_plus[:, 0] = allowed_minus[:, 0] = True
    batch = AlignBatch(
        torch.cat([ids, canvas], dim=1), mask, gen_length, positive, negative,
        allowed_plus, allowed_minus,
    )  # fmt: skip
    window = (0, gen_length - 1)

    def policy(i, m):
        return model(i, m).hidden_states

    def reference(i, m):
        with model.disable_adapter():
            return model(i, m).hidden_states

    def logits(i, m, adapter=True):
        if adapter:
            return model(i, m, return_logits=True).logits
        with model.disable_adapter():
            return model(i, m, return_logits=True).logits

    head = (base.lm_head_weight, base.lm_head_bias)
    fused = mosa_terms(policy, reference, head, base.logits_shift, batch, window)
    plain = reference_terms(logits, lambda i, m: logits(i, m, False), batch, window)
    torch.testing.assert_close(fused.reward_plus, plain.reward_plus, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused.reward_minus, plain.reward_minus, rtol=1e-4, atol=1e-4)
    assert torch.equal(fused.best_plus, plain.best_plus)
    assert torch.equal(fused.best_minus, plain.best_minus)
    for best, allowed in ((fused.best_plus, allowed_plus), (fused.best_minus, allowed_minus)):
        assert allowed[torch.arange(3), best].all()
    # Without the masks the best offsets differ for some row: the masks do something here.
    free = mosa_terms(
        policy, reference, head, base.logits_shift,
        AlignBatch(batch.input_ids, mask, gen_length, positive, negative), window,
    )  # fmt: skip
    assert not torch.equal(free.best_plus, fused.best_plus) or not torch.equal(
        free.best_minus, fused.best_minus
    )


def test_a2d_term_is_the_mean_eos_log_probability_over_the_targets():
    base, model = lora_model("llada")
    gen_length, mask_id, eos = 17, 126, 125
    ids, mask = padded_batch([6, 3], total=6, seed=7)
    canvas = torch.full((2, gen_length), mask_id)
    canvas[0, 2:5] = torch.tensor([20, 21, 22])
    targets = torch.full((2, gen_length), IGNORE)
    targets[0, 5:] = eos
    targets[1, 9:12] = eos
    mask = torch.cat([mask, torch.ones_like(canvas)], dim=1).bool()
    batch = EosBatch(torch.cat([ids, canvas], dim=1), mask, gen_length, targets)

    terms = a2d_terms(
        lambda i, m: model(i, m).hidden_states,
        (base.lm_head_weight, base.lm_head_bias),
        base.logits_shift,
        batch,
    )
    logits = model(batch.input_ids, mask, return_logits=True).logits[:, -gen_length:]
    logp = torch.log_softmax(logits.double(), dim=-1)[..., eos]
    want = torch.stack([logp[0, 5:].mean(), logp[1, 9:12].mean()])
    torch.testing.assert_close(terms.reward_plus.double(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(terms.loss(0.05), -terms.reward_plus)
    (grad,) = torch.autograd.grad(
        terms.loss(0.05).sum(), [p for p in model.parameters() if p.requires_grad][:1]
    )
    assert grad.abs().max() > 0


SMALL = dict(gen_length=16, window=(2, 6), lora_r=4, lora_alpha=8, lr=1e-3, clip=1.0)


def test_an_unknown_defense_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"defense must be one of \('mosa', 'a2d', 'anywhere'\)"):
        AlignConfig(model=str(mosa.tiny.path()), output_dir=str(tmp_path), defense="guard")


@pytest.mark.parametrize("defense", ["a2d", "anywhere"])
def test_the_trainer_runs_each_defense_and_repeats_under_a_seed(tmp_path, defense):
    harmful, benign = mosa.tiny.align_prompts()
    runs = []
    for name in ("one", "two"):
        config = AlignConfig(
            model=str(mosa.tiny.path()), output_dir=str(tmp_path / name), max_steps=3,
            batch_size=2, progress=False, defense=defense, benign_beta=1.0, **SMALL,
        )  # fmt: skip
        train(config, harmful[:8], sentences=mosa.tiny.align_sentences(), benign_prompts=benign)
        log = [
            json.loads(line)
            for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        ]
        runs.append([(r["loss"], r["R_plus"]) for r in log if "step" in r])
    assert len(runs[0]) == 3 and runs[0] == runs[1]
    assert all(torch.isfinite(torch.tensor(run)).all() for run in runs)
    if defense == "a2d":
        assert all(r_plus < 0 for _, r_plus in runs[0])  # a mean log-probability of EOS
    saved = json.loads((tmp_path / "one" / "align_config.json").read_text())
    assert saved["defense"] == defense


def test_cli_defense_flags_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["align", "--out", str(tmp_path / "x"), "--a2d", "--anywhere"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["align", "--out", str(tmp_path / "a2d"), "--a2d", "--max-steps", "1"]) == 0
    saved = json.loads((tmp_path / "a2d" / "align_config.json").read_text())
    assert saved["defense"] == "a2d"

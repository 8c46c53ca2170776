"""The MOSA trainer: exact resume after a kill, and data parallel runs equal to one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mosa.tiny
from mosa.align import AlignConfig, train
from mosa.cli import main
from mosa.models import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_checkpoints import tiny_family_folder, tiny_sentence_args  # noqa: E402

pytest.importorskip("peft")

SMALL = dict(gen_length=16, window=(2, 6), lora_r=4, lora_alpha=8, lr=1e-3, clip=1.0)


def _prompts(n: int = 12) -> list[str]:
    harmful, _ = mosa.tiny.align_prompts()
    return harmful[:n]


def _config(out: Path, **overrides) -> AlignConfig:
    settings = dict(SMALL, model=str(mosa.tiny.path()), output_dir=str(out), progress=False)
    return AlignConfig(**{**settings, **overrides})


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


class _Killed(Exception):
    pass


@pytest.mark.parametrize("group_by_length", [False, True])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, group_by_length):
    sentences = mosa.tiny.align_sentences()
    settings = dict(batch_size=2, max_steps=5, save_every=2, group_by_length=group_by_length)
    whole = train(_config(tmp_path / "whole", **settings), _prompts(), sentences=sentences)

    def kill_at_step_3(record):
        if record["step"] == 3:
            raise _Killed  # after step 3's update and log line, before any later checkpoint

    with pytest.raises(_Killed):
        train(
            _config(tmp_path / "cut", **settings),
            _prompts(),
            sentences=sentences,
            on_step=kill_at_step_3,
        )
    state = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2
    resumed = train(_config(tmp_path / "cut", **settings), _prompts(), sentences=sentences)

    want, got = _adapter(whole), _adapter(resumed)
    assert want.keys() == got.keys() and len(want) > 0
    for name in want:
        assert torch.equal(want[name], got[name]), name
    lines = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2, 3, 4]
    reference = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in lines] == [r["loss"] for r in reference]


def test_metrics_and_outputs(tmp_path):
    out = train(
        _config(tmp_path / "run", batch_size=3, max_steps=2, export_merged=True),
        _prompts(),
        sentences=mosa.tiny.align_sentences(),
    )
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    expected = {"R_plus", "R_minus", "R", "KL", "loss", "grad_norm", "lr", "prompts_per_s"}
    assert expected | {"tokens_per_s", "peak_memory_bytes"} <= records[0].keys()
    assert records[0]["KL"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts as the identity
    assert records[1]["KL"] > 0
    assert (out / "adapter" / "adapter_config.json").exists()
    merged = load_model(out / "merged")
    assert (out / "merged" / "tokenizer.json").exists()
    assert sum(p.numel() for p in merged.parameters()) == sum(
        p.numel() for p in load_model(mosa.tiny.path()).parameters()
    )


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="prompts is empty"):
        train(_config(tmp_path / "a"), [])
    with pytest.raises(ValueError, match="do not fill one global batch"):
        train(
            _config(tmp_path / "b", batch_size=8),
            _prompts(3),
            sentences=mosa.tiny.align_sentences(),
        )
    with pytest.raises(ValueError, match="overruns gen_length=16"):
        train(
            _config(tmp_path / "c", window=(12, 14)),
            _prompts(),
            sentences=mosa.tiny.align_sentences(),
        )
    with pytest.raises(ValueError, match="words the tokenizer does not know"):
        train(_config(tmp_path / "d"), _prompts())  # the English defaults
    with pytest.raises(ValueError, match="set lora=False"):
        _config(tmp_path / "e", fsdp=True)
    with pytest.raises(ValueError, match="random_init 'llada-9b' is not a preset"):
        _config(tmp_path / "g", random_init="llada-9b")
    with pytest.raises(SystemExit, match="no prompts"):
        empty = tmp_path / "empty.txt"
        empty.write_text("\n")
        main(["align", "--out", str(tmp_path / "f"), "--prompts", str(empty)])


def test_a_prompt_holding_the_mask_token_is_named_before_any_step(tmp_path):
    """The canvas refuses a prompt holding the mask id; the trainer checks every prompt up
    front, so the error names the prompt instead of coming from the step whose batch holds it
    (the prompt order is a permutation: that could be any step)."""
    _, benign = mosa.tiny.align_prompts()
    prompts = _prompts()
    prompts[7] += " <|mdm_mask|>"
    steps = []
    settings = dict(batch_size=2, max_steps=1)
    with pytest.raises(ValueError, match=r"^prompts\[7\] holds the mask token '<\|mdm_mask\|>'"):
        train(
            _config(tmp_path / "a", **settings),
            prompts,
            sentences=mosa.tiny.align_sentences(),
            on_step=steps.append,
        )
    with pytest.raises(ValueError, match=r"^benign_prompts\[1\] holds the mask token"):
        train(
            _config(tmp_path / "b", benign_beta=0.1, **settings),
            _prompts(),
            benign_prompts=[benign[0], "<|mdm_mask|> " + benign[1]],
            sentences=mosa.tiny.align_sentences(),
            on_step=steps.append,
        )
    assert steps == []
    file = tmp_path / "prompts.txt"
    file.write_text("\n".join(prompts) + "\n")
    with pytest.raises(SystemExit) as exited:
        main(["align", "--out", str(tmp_path / "c"), "--prompts", str(file), "--max-steps", "1"])
    assert exited.value.code == (
        f"mosa align: --prompts {file}: prompt 8 holds the mask token '<|mdm_mask|>' (id 4), "
        "which marks the positions to generate; remove it from the prompt"
    )


def _assert_same_updates(got: dict, want: dict, start: dict) -> None:
    """The weights moved the same way. Adam moves an element by about lr per step even where its
    gradient is ~0, so a different reduction order can flip such an element's sign: compare
    the update's norm and all but a few elements, not each element."""
    assert got.keys() == want.keys() == start.keys()
    diff = sum(((got[n] - want[n]).double() ** 2).sum() for n in want) ** 0.5
    update = sum(((want[n] - start[n]).double() ** 2).sum() for n in want) ** 0.5
    assert update > 0, "the run did not train"
    assert diff / update < 1e-2, (diff, update)
    close = sum(torch.isclose(got[n], want[n], rtol=1e-4, atol=1e-5).sum() for n in want)
    assert close / sum(t.numel() for t in want.values()) > 0.999


def _torchrun(args: list[str], nproc: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "mosa.cli", "align", *args,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _cli_args(out: Path, prompts: Path, per_process_batch: int, model: Path | None = None):
    folder = [] if model is None else [str(model), *tiny_sentence_args(model)]
    return [
        *folder, "--out", str(out), "--prompts", str(prompts), "--benign-beta", "0",
        "--gen-length", "16", "--window", "2", "6", "--lora-r", "4", "--lora-alpha", "8",
        "--batch-size", str(per_process_batch), "--max-steps", "3", "--seed", "1",
    ]  # fmt: skip


def _model_folder(tmp_path: Path, family: str) -> Path | None:
    """None: the embedded tiny model; else ``family``'s tiny random model's folder."""
    if family == "tiny":
        return None
    return tiny_family_folder(tmp_path / family, family, seed=2)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {
        k: v for shard in sorted(folder.glob("*.safetensors")) for k, v in load_file(shard).items()
    }


# LLaDA2 (block-causal canvas, block 4, and with --lora-experts the routed experts' adapters,
# which only some tokens reach, and the router balancing loss).
FAMILIES = [("tiny", ()), ("llada2", ("--block-length", "4")), ("llada2", ("--lora-experts",))]


@pytest.mark.slow
@pytest.mark.parametrize(("family", "extra"), FAMILIES)
def test_two_process_ddp_equals_one_process(tmp_path, family, extra):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(_prompts()) + "\n")
    model = _model_folder(tmp_path, family)
    assert main(["align", *_cli_args(tmp_path / "one", prompts, 4, model), *extra]) == 0
    _torchrun([*_cli_args(tmp_path / "two", prompts, 2, model), *extra], nproc=2)
    one, two = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    # LoRA B starts at zero (peft): its values are its update, the yardstick for A's too.
    start = {n: torch.zeros_like(t) if "lora_B" in n else t for n, t in one.items()}
    _assert_same_updates(two, one, start)
    metrics = [
        [json.loads(x)["R"] for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("one", "two")
    ]
    assert metrics[0] == pytest.approx(metrics[1], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["tiny", "llada2"])
def test_two_process_fsdp2_full_finetune_equals_one_process(tmp_path, family):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(_prompts()) + "\n")
    model = _model_folder(tmp_path, family)
    assert main(["align", *_cli_args(tmp_path / "one", prompts, 4, model), "--full-finetune"]) == 0
    _torchrun([*_cli_args(tmp_path / "two", prompts, 2, model), "--fsdp"], nproc=2)
    one = _weights(tmp_path / "one" / "model")
    two = _weights(tmp_path / "two" / "model")
    _assert_same_updates(two, one, _weights(model or mosa.tiny.path()))


def test_benign_prompts_are_walked_in_order(monkeypatch):
    from mosa.align import trainer
    from mosa.distributed import Runtime
    from mosa.text.prompts import load_tokenizer

    harmful, benign = mosa.tiny.align_prompts()
    config = _config(Path("unused"), batch_size=2, grad_accum=2, epochs=2, benign_beta=1.0)
    tokenizer = load_tokenizer(mosa.tiny.path())
    seen = []

    def canvas(tokenizer, prompts, *rest):
        seen.extend(prompts)
        return torch.zeros((len(prompts), 1), dtype=torch.long), None

    monkeypatch.setattr(trainer, "_canvas", canvas)
    for rank in range(2):
        runtime = Runtime(rank, 2, torch.device("cpu"))
        data = trainer._Data(
            config, runtime, tokenizer, harmful[:16], benign[:20], mosa.tiny.align_sentences(), 0
        )
        for step in range(data.steps):
            for micro in range(config.grad_accum):
                data.benign(step, micro)
    # 2 epochs x 2 steps x global batch 8 = 32 places over 20 prompts, each place taken once.
    expected = [benign[place % 20] for place in range(32)]
    assert sorted(seen) == sorted(expected)


def test_group_by_length_batches_alike_prompts_the_same_way_on_any_split():
    from mosa.align import trainer
    from mosa.distributed import Runtime
    from mosa.text.prompts import load_tokenizer

    tokenizer = load_tokenizer(mosa.tiny.path())
    harmful, _ = mosa.tiny.align_prompts()
    prompts = harmful[:90]  # 11 global batches of 8, 2 prompts left over
    lengths = trainer._prompt_lengths(tokenizer, prompts)

    def epoch_batches(group: bool, world: int, epoch: int) -> list[list[int]]:
        """Each step's global batch as prompt indices, ranks and micro-steps together."""
        config = _config(Path("unused"), batch_size=8 // world // 2, grad_accum=2, epochs=2)
        config.group_by_length = group
        ranks = [
            trainer._Data(
                config,
                Runtime(rank, world, torch.device("cpu")),
                tokenizer,
                prompts,
                [],
                mosa.tiny.align_sentences(),
                0,
            )  # fmt: skip
            for rank in range(world)
        ]
        order = ranks[0]._order(epoch)
        steps = []
        for step in range(epoch * 11, epoch * 11 + 11):
            places = [
                place
                for micro in range(2)
                for data in ranks
                for place in data._positions(step, micro)[1]
            ]
            steps.append(sorted(order[place] for place in places))
        return steps

    def padding(steps: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in steps)

    for epoch in (0, 1):
        grouped = epoch_batches(True, 1, epoch)
        plain = epoch_batches(False, 1, epoch)
        assert sorted(i for b in grouped for i in b) == sorted(i for b in plain for i in b)
        assert padding(grouped) < padding(plain) / 4
        assert grouped == epoch_batches(True, 1, epoch) == epoch_batches(True, 2, epoch)
    assert epoch_batches(True, 1, 0) != epoch_batches(True, 1, 1)

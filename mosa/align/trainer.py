"""The MOSA trainer: one code path for one process and for N under ``torchrun``.

``train(config, prompts)`` loads the model, adds LoRA (or trains every weight), and runs the
objective of ``mosa.align.objective`` over the prompts for ``config.epochs`` epochs. Under
``torchrun`` it runs data parallel: DDP for LoRA, FSDP2 (``fully_shard``) for full fine-tuning.

Reproducibility: the prompt order is a seeded permutation per epoch and each prompt's sentence
draw depends only on the seed and the prompt's place in that order, so the same global batch
(``world size x batch_size x grad_accum``) gives the same updates on 1 process or N. A
checkpoint (trainable weights, optimizer, RNG, step) is written atomically every
``save_every`` steps; ``resume`` continues from it exactly.

Output folder: ``metrics.jsonl`` (one line per step), ``align_config.json``, ``checkpoint/``,
and at the end ``adapter/`` (peft format; LoRA) or ``model/`` (full fine-tuning), plus
``merged/`` (LoRA merged into the weights) when ``export_merged``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import random
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from tqdm.auto import tqdm

from mosa.distributed import Runtime, join
from mosa.models import load_model
from mosa.models.base import DEFAULT_MAX_SHARD_BYTES
from mosa.models.files import write_checkpoint, write_folder
from mosa.text.canvas import build_canvas
from mosa.text.prompts import encode_prompts, load_tokenizer

from .objective import IGNORE, AlignBatch, check_window, mosa_terms, response_kl
from .sentences import Sentences, encode_sentences

PAPER_WINDOW = (20, 60)
INITIAL_ALIGNMENT_WINDOW = (0, 0)


@dataclass
class AlignConfig:
    """Every setting of a MOSA run; defaults are the paper's (DESIGN §7).

    ``batch_size`` is per process and micro-step; the global batch is
    ``world_size * batch_size * grad_accum`` prompts per optimizer step. ``max_steps`` caps the
    run (default: ``epochs`` passes over the prompts; a last partial global batch is dropped).
    ``benign_beta`` weights the utility-preserving KL on benign prompts (0 = off, the paper).
    """

    model: str
    output_dir: str
    gen_length: int = 128
    window: tuple[int, int] = PAPER_WINDOW
    beta: float = 0.05
    benign_beta: float = 0.0
    lora: bool = True
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.0
    fsdp: bool = False
    lr: float = 5e-5
    weight_decay: float = 0.0
    clip: float = 0.01
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 1
    grad_accum: int = 1
    seed: int = 0
    save_every: int = 0
    resume: bool = True
    gradient_checkpointing: bool = False
    export_merged: bool = False
    device: str | None = None
    progress: bool = True

    def __post_init__(self):
        self.window = tuple(self.window)
        positive = ("gen_length", "lora_r", "lora_alpha", "epochs", "batch_size", "grad_accum")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        for name in ("beta", "benign_beta", "weight_decay", "lora_dropout", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and self.clip > 0):
            raise ValueError(f"lr and clip must be > 0, got lr={self.lr}, clip={self.clip}")
        if self.fsdp and self.lora:
            raise ValueError("fsdp=True is for full fine-tuning; set lora=False (LoRA uses DDP)")
        if len(self.window) != 2:
            raise ValueError(f"window must be (first, last) offsets, got {self.window}")


class _Models:
    """The trained module (wrapped for data parallelism), the reference forward and the head."""

    def __init__(self, config: AlignConfig, runtime: Runtime):
        dtype = torch.bfloat16 if runtime.device.type == "cuda" else torch.float32
        base = load_model(config.model, device=runtime.device, dtype=dtype)
        if config.gradient_checkpointing:
            base.gradient_checkpointing_enable()
        self.logits_shift = base.logits_shift
        self.base = base
        if config.lora:
            import peft

            lora = peft.LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=base.lora_target_modules,
            )
            self.unwrapped = peft.get_peft_model(base, lora)
            self._frozen_reference = None
        else:
            self._frozen_reference = copy.deepcopy(base).eval().requires_grad_(False)
            self.unwrapped = base
        self.unwrapped.train()
        self.trained = self.unwrapped
        self.fsdp = config.fsdp
        if config.fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(runtime.device.type, (runtime.world,))
            for block in base.blocks:
                fully_shard(block, mesh=mesh)
            # The root stays gathered until backward: the fused head ops read the LM head
            # weight outside the module's forward.
            fully_shard(base, mesh=mesh, reshard_after_forward=False)
        elif runtime.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.trained = DistributedDataParallel(self.unwrapped, device_ids=ids)

    def policy(self, input_ids, attention_mask):
        return self.trained(input_ids, attention_mask).hidden_states

    def reference(self, input_ids, attention_mask):
        if self._frozen_reference is not None:
            return self._frozen_reference(input_ids, attention_mask).hidden_states
        # Outside DDP's wrapper: the reference pass must not touch its gradient hooks.
        with self.unwrapped.disable_adapter():
            return self.unwrapped(input_ids, attention_mask).hidden_states

    @property
    def head(self):
        if self.fsdp:
            self.base.unshard()  # the head is read before the forward that would gather it
        return self.base.lm_head_weight, self.base.lm_head_bias

    def parameters(self):
        return [p for p in self.unwrapped.parameters() if p.requires_grad]


# Data ---------------------------------------------------------------------------------------


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def _pad(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), IGNORE, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def _canvas(tokenizer, prompts: list[str], gen_length: int, mask_id: int, device):
    ids, mask = encode_prompts(tokenizer, prompts, chat_template=True, device=device)
    canvas = build_canvas(ids, mask, gen_length, mask_id)
    return canvas.x, canvas.attention_mask


class _Data:
    """Which prompts and sentences each (step, micro-step, rank) gets."""

    def __init__(self, config, runtime, tokenizer, prompts, benign_prompts, sentences, mask_id):
        self.config, self.runtime, self.tokenizer = config, runtime, tokenizer
        self.prompts, self.benign_prompts = list(prompts), list(benign_prompts)
        self.refusals, self.harmful = encode_sentences(tokenizer, sentences)
        self.mask_id = mask_id
        self.global_batch = runtime.world * config.batch_size * config.grad_accum
        self.steps_per_epoch = len(self.prompts) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(self.prompts)} prompts do not fill one global batch of {self.global_batch} "
                "(world size x batch_size x grad_accum); give more prompts or a smaller batch"
            )
        total = self.steps_per_epoch * config.epochs
        self.steps = total if config.max_steps is None else min(total, config.max_steps)
        self._orders: dict[int, list[int]] = {}

    def longest_sentence(self) -> int:
        return max(len(s) for s in self.refusals + self.harmful)

    def _positions(self, step: int, micro: int) -> tuple[int, list[int]]:
        """The epoch and this rank's places in the epoch order."""
        epoch, within = divmod(step, self.steps_per_epoch)
        first = within * self.global_batch
        first += (micro * self.runtime.world + self.runtime.rank) * self.config.batch_size
        return epoch, list(range(first, first + self.config.batch_size))

    def batch(self, step: int, micro: int) -> AlignBatch:
        epoch, places = self._positions(step, micro)
        if epoch not in self._orders:
            self._orders = {epoch: _epoch_order(len(self.prompts), self.config.seed, epoch)}
        order = self._orders[epoch]
        draws = [random.Random(f"{self.config.seed}:{epoch}:{place}") for place in places]
        ids, mask = _canvas(
            self.tokenizer,
            [self.prompts[order[place]] for place in places],
            self.config.gen_length,
            self.mask_id,
            self.runtime.device,
        )
        return AlignBatch(
            ids,
            mask,
            self.config.gen_length,
            _pad([d.choice(self.refusals) for d in draws]).to(self.runtime.device),
            _pad([d.choice(self.harmful) for d in draws]).to(self.runtime.device),
        )

    def benign(self, step: int, micro: int):
        """The benign prompts of (step, micro-step, this rank): the list walked in order."""
        epoch, places = self._positions(step, micro)
        start, n = epoch * self.steps_per_epoch * self.global_batch, len(self.benign_prompts)
        prompts = [self.benign_prompts[(start + place) % n] for place in places]
        return _canvas(
            self.tokenizer, prompts, self.config.gen_length, self.mask_id, self.runtime.device
        )


# Checkpoints --------------------------------------------------------------------------------

_STATE_OPTIONS = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def _save_checkpoint(folder: Path, models: _Models, optimizer, step: int, runtime: Runtime):
    weights, optim = get_state_dict(models.unwrapped, optimizer, options=_STATE_OPTIONS)
    if not runtime.main:
        return

    def fill(staging: Path) -> None:
        save_file(
            {k: v.contiguous() for k, v in weights.items()}, staging / "trainable.safetensors"
        )
        torch.save(optim, staging / "optimizer.pt")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, staging / "rng.pt")
        (staging / "state.json").write_text(json.dumps({"step": step}) + "\n")

    write_folder(folder, fill)


def _load_checkpoint(folder: Path, models: _Models, optimizer, device) -> int:
    """Restores a checkpoint; returns the number of steps it had completed."""
    weights = load_file(folder / "trainable.safetensors")
    optim = torch.load(folder / "optimizer.pt", weights_only=True)
    set_state_dict(
        models.unwrapped,
        optimizer,
        model_state_dict=weights,
        optim_state_dict=optim,
        options=dataclasses.replace(_STATE_OPTIONS, cpu_offload=False, strict=False),
    )
    rng = torch.load(folder / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((folder / "state.json").read_text())["step"]


def _trim_metrics(path: Path, steps_done: int) -> None:
    """Drops lines a killed run logged after its last checkpoint."""
    if path.exists():
        kept = [
            line for line in path.read_text().splitlines() if json.loads(line)["step"] < steps_done
        ]
        path.write_text("".join(line + "\n" for line in kept))


def _save_final(out: Path, models: _Models, config: AlignConfig, runtime: Runtime) -> None:
    tokenizer_files = Path(config.model)
    if config.lora:
        if runtime.main:
            write_folder(out / "adapter", models.unwrapped.save_pretrained)
            if config.export_merged:
                merged = models.unwrapped.merge_and_unload()
                merged.save_pretrained(out / "merged")
                _copy_tokenizer(tokenizer_files, out / "merged")
        return
    weights = get_model_state_dict(
        models.unwrapped, options=dataclasses.replace(_STATE_OPTIONS, ignore_frozen_params=False)
    )
    if runtime.main:
        write_checkpoint(
            out / "model", models.base.config.to_dict(), weights, DEFAULT_MAX_SHARD_BYTES
        )
        _copy_tokenizer(tokenizer_files, out / "model")


def _copy_tokenizer(source: Path, target: Path) -> None:
    for path in source.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab")):
            shutil.copy2(path, target / path.name)


# Training -----------------------------------------------------------------------------------


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reduce_sums(values: dict[str, float], runtime: Runtime) -> dict[str, float]:
    if not runtime.distributed:
        return values
    packed = torch.tensor(list(values.values()), dtype=torch.float64, device=runtime.device)
    dist.all_reduce(packed)
    return dict(zip(values, packed.tolist(), strict=True))


def train(
    config: AlignConfig,
    prompts: Sequence[str],
    *,
    sentences: Sentences | None = None,
    benign_prompts: Sequence[str] = (),
    on_step: Callable[[dict], None] | None = None,
) -> Path:
    """Runs MOSA on ``prompts`` and returns the output folder.

    ``sentences`` defaults to the built-in English sets; ``benign_prompts`` feed the
    ``benign_beta`` regulariser; ``on_step`` gets each step's metrics dict.
    """
    if not prompts:
        raise ValueError("prompts is empty; give at least one harmful prompt to align on")
    if config.benign_beta > 0 and not benign_prompts:
        raise ValueError("benign_beta > 0 needs benign_prompts")
    runtime = join(config.device)
    out = Path(config.output_dir)
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(config.model)
    models = _Models(config, runtime)
    mask_id = models.base.mask_token_id
    data = _Data(
        config, runtime, tokenizer, prompts, benign_prompts, sentences or Sentences(), mask_id
    )
    check_window(config.window, config.gen_length, data.longest_sentence())
    optimizer = torch.optim.AdamW(
        models.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )

    metrics_path, checkpoint = out / "metrics.jsonl", out / "checkpoint"
    start = 0
    if config.resume and (checkpoint / "state.json").exists():
        start = _load_checkpoint(checkpoint, models, optimizer, runtime.device)
    if runtime.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "align_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
        if start:
            _trim_metrics(metrics_path, start)
        else:
            metrics_path.write_text("")

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if runtime.device.type == "cuda"
        else contextlib.nullcontext()
    )
    rows_per_step = config.batch_size * config.grad_accum
    bar = tqdm(
        range(start, data.steps),
        initial=start,
        total=data.steps,
        desc="MOSA",
        unit="step",
        disable=not (config.progress and runtime.main),
    )
    for step in bar:
        began = time.perf_counter()
        sums = dict.fromkeys(("R_plus", "R_minus", "KL", "benign_KL", "loss", "tokens"), 0.0)
        for micro in range(config.grad_accum):
            batch = data.batch(step, micro)
            last = micro == config.grad_accum - 1
            no_sync = getattr(models.trained, "no_sync", None)
            sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
            with sync, autocast:
                terms = mosa_terms(
                    models.policy, models.reference, models.head, models.logits_shift,
                    batch, config.window,
                )  # fmt: skip
                loss = terms.loss(config.beta).sum()
                if config.benign_beta > 0:
                    ids, mask = data.benign(step, micro)
                    benign_kl = response_kl(
                        models.policy, models.reference, models.head, models.logits_shift,
                        ids, mask, config.gen_length,
                    )  # fmt: skip
                    loss = loss + config.benign_beta * benign_kl.sum()
                    sums["benign_KL"] += benign_kl.sum().item()
                (loss / rows_per_step).backward()
            sums["R_plus"] += terms.reward_plus.sum().item()
            sums["R_minus"] += terms.reward_minus.sum().item()
            sums["KL"] += terms.kl.sum().item()
            sums["loss"] += loss.item()
            sums["tokens"] += batch.input_ids.numel()
        grad_norm = torch.nn.utils.clip_grad_norm_(models.parameters(), config.clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        sums = _reduce_sums(sums, runtime)
        rows = rows_per_step * runtime.world
        seconds = time.perf_counter() - began
        record = {k: sums[k] / rows for k in ("R_plus", "R_minus", "KL", "benign_KL", "loss")}
        record = {
            "step": step,
            **record,
            "R": record["R_plus"] - record["R_minus"],
            "grad_norm": grad_norm.item(),
            "lr": optimizer.param_groups[0]["lr"],
            "prompts_per_s": rows / seconds,
            "tokens_per_s": sums["tokens"] / seconds,
            "peak_memory_bytes": _peak_memory(runtime.device),
        }
        if runtime.main:
            with open(metrics_path, "a") as log:
                log.write(json.dumps(record) + "\n")
            bar.set_postfix(R=f"{record['R']:.1f}", KL=f"{record['KL']:.2f}")
        if on_step is not None:
            on_step(record)
        if config.save_every and (step + 1) % config.save_every == 0 and step + 1 < data.steps:
            _save_checkpoint(checkpoint, models, optimizer, step + 1, runtime)
    bar.close()
    _save_final(out, models, config, runtime)
    if runtime.distributed:
        dist.barrier()
    return out

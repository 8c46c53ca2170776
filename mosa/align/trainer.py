"""The MOSA trainer: one code path for one process and for N under ``torchrun``.

``train(config, prompts)`` loads the model, adds LoRA (or trains every weight), and runs the
objective of ``mosa.align.objective`` over the prompts for ``config.epochs`` epochs. Under
``torchrun`` it runs data parallel: DDP for LoRA, FSDP2 (``fully_shard``) for full fine-tuning.

Reproducibility: the prompt order is a seeded permutation per epoch and each prompt's sentence
draw depends only on the seed and the prompt's place in that order, so the same global batch
(``world size x batch_size x grad_accum``) gives the same updates on 1 process or N. A
checkpoint (trainable weights, optimizer, RNG, step, the run's settings) is written atomically
every ``save_every`` steps; ``resume`` continues from it exactly, under the resume rules of
``mosa.align.run_folder``.

Output folder (locked for the run: ``.lock``): ``metrics.jsonl`` (one line per step),
``align_config.json``, ``checkpoint/``,
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
from mosa.models import PRESETS, build_model, load_model
from mosa.models.base import DEFAULT_MAX_SHARD_BYTES
from mosa.models.families import is_block_diffusion
from mosa.models.files import write_checkpoint, write_folder
from mosa.sampling import LLADA2_REFERENCE
from mosa.sampling.predictor import model_token_id
from mosa.text.canvas import build_canvas
from mosa.text.prompts import check_no_mask_in_prompts, encode_prompts, load_tokenizer
from mosa_kernels.ops._checks import check_positive_int
from mosa_kernels.random import derive_seed

from .defenses import defense_for
from .objective import (
    AlignBatch,
    EosBatch,
    ResponseCanvas,
    check_window,
    lay_out_blocks,
    response_kl,
)
from .run_folder import (
    START_OVER,
    TrainingInterrupted,
    data_fingerprint,
    exclusive,
    interrupt_between_steps,
    resume_step,
    run_settings,
    trim_metrics,
)
from .sentences import Sentences, encode_sentences

PAPER_WINDOW = (20, 60)


@dataclass
class AlignConfig:
    """Every setting of a MOSA run; defaults are the paper's (docs/DESIGN.md §7).

    ``batch_size`` is per process and micro-step; the global batch is
    ``world_size * batch_size * grad_accum`` prompts per optimizer step. ``max_steps`` caps the
    run (default: ``epochs`` passes over the prompts; a last partial global batch is dropped).
    ``benign_beta`` weights the utility-preserving KL on benign prompts (0 = off, the paper).
    ``random_init``: build the model with random weights (seed ``seed``) from a preset name of
    ``mosa.models.PRESETS`` (``"llada-8b"``) or a ``config.json`` dict, instead of loading the
    weights of ``model``, which then supplies only the tokenizer: LLaDA-8B shapes without a
    16 GB folder, for benchmarks. ``group_by_length``: each global batch takes prompts of
    similar length (see ``_grouped_by_length``), so padding costs little at ``batch_size`` > 1.
    ``defense``: a trained objective of ``mosa.align.defenses.DEFENSES``: ``"mosa"`` (the
    paper's objective; with ``window=(0, 0)`` Initial Alignment), ``"a2d"`` (A2D: masked
    positions of partly masked harmful continuations supervised to EOS; ``window`` and
    ``beta`` unused) or ``"anywhere"`` (ours: MOSA on canvases with committed harmful pieces,
    each row's window a random one of ``window``'s width; see ``mosa.align.canvases``).
    ``block_length``: the block of a block-diffusion model's (LLaDA2's) canvas, laid out and
    attended as ``block_generate`` decodes it (None: the family sampler's default, 32); a
    bidirectional model refuses it. ``lora_experts``: LoRA also on the routed experts of an MoE
    model (default: attention, dense MLPs and shared experts); when experts train (this, or
    full fine-tuning) the routers' load-balancing loss is added (docs/DESIGN.md §7).
    """

    model: str
    output_dir: str
    random_init: str | dict | None = None
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
    group_by_length: bool = False
    seed: int = 0
    save_every: int = 0
    resume: bool = True
    gradient_checkpointing: bool = False
    export_merged: bool = False
    device: str | None = None
    progress: bool = True
    defense: str = "mosa"
    block_length: int | None = None
    lora_experts: bool = False

    def __post_init__(self):
        self.window = tuple(self.window)
        defense_for(self.defense)  # a ValueError naming the defenses
        positive = ("gen_length", "lora_r", "lora_alpha", "epochs", "batch_size", "grad_accum")
        for name in positive:
            check_positive_int(name, getattr(self, name))
        if self.block_length is not None:
            check_positive_int("block_length", self.block_length)
        if self.lora_experts and not self.lora:
            raise ValueError(
                "lora_experts=True adds LoRA to the routed experts; full fine-tuning (lora=False) "
                "trains them already, so leave lora_experts False"
            )
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
        if isinstance(self.random_init, str) and self.random_init not in PRESETS:
            raise ValueError(
                f"random_init {self.random_init!r} is not a preset ({', '.join(PRESETS)}); "
                "give one of them or a config.json dict"
            )
        if not isinstance(self.random_init, str | dict | None):
            raise TypeError(
                "random_init must be a preset name, a config.json dict or None, "
                f"got {type(self.random_init).__name__}"
            )


class _Models:
    """The trained module (wrapped for data parallelism), the reference forward and the head."""

    def __init__(self, config: AlignConfig, runtime: Runtime):
        dtype = torch.bfloat16 if runtime.device.type == "cuda" else torch.float32
        if config.random_init is None:
            base = load_model(config.model, device=runtime.device, dtype=dtype)
        else:
            base = build_model(
                config.random_init, device=runtime.device, dtype=dtype, seed=config.seed
            )
        if config.gradient_checkpointing:
            base.gradient_checkpointing_enable()
        self.logits_shift = base.logits_shift
        self._aux_losses: list[torch.Tensor] = []
        self.base = base
        if config.lora:
            import peft

            lora = peft.LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=base.lora_targets(experts=config.lora_experts),
            )
            self.unwrapped = peft.get_peft_model(base, lora)
            self._frozen_reference = None
        else:
            self._frozen_reference = copy.deepcopy(base).eval().requires_grad_(False)
            self.unwrapped = base
        if config.lora_experts or not config.lora:
            base.keep_router_outputs()  # experts train: their routers' balancing loss
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
            # Routed experts' adapters that no token of a step reached get no gradient.
            self.trained = DistributedDataParallel(
                self.unwrapped, device_ids=ids, find_unused_parameters=config.lora_experts
            )

    def policy(self, input_ids, attention_mask, block_length=None):
        out = self.trained(input_ids, attention_mask, block_length=block_length)
        if out.aux_loss is not None:  # e.g. an MoE router's load balancing
            self._aux_losses.append(out.aux_loss)
        return out.hidden_states

    def take_aux_loss(self, rows: int) -> torch.Tensor | float:
        """The auxiliary losses of the policy forwards since the last call, summed and weighted
        by the micro-batch's ``rows`` (the objective is a sum over rows); 0 when none."""
        taken, self._aux_losses = self._aux_losses, []
        return rows * sum(taken) if taken else 0.0

    def reference(self, input_ids, attention_mask, block_length=None):
        if self._frozen_reference is not None:
            reference = self._frozen_reference
            return reference(input_ids, attention_mask, block_length=block_length).hidden_states
        # Outside DDP's wrapper: the reference pass must not touch its gradient hooks.
        with self.unwrapped.disable_adapter():
            return self.unwrapped(
                input_ids, attention_mask, block_length=block_length
            ).hidden_states

    def gathered_head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The LM head ``(weight, bias)``; under FSDP it is gathered first, because the fused
        head ops read it outside the forward that would gather it."""
        if self.fsdp:
            self.base.unshard()
        return self.base.lm_head_weight, self.base.lm_head_bias

    def parameters(self):
        return [p for p in self.unwrapped.parameters() if p.requires_grad]


# Data ---------------------------------------------------------------------------------------


def run_length(config: AlignConfig, world: int, n_prompts: int) -> tuple[int, int]:
    """``(steps per epoch, steps of the run)``; ValueError when no global batch fills."""
    global_batch = world * config.batch_size * config.grad_accum
    steps_per_epoch = n_prompts // global_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"{n_prompts} prompts do not fill one global batch of {global_batch} "
            "(world size x batch_size x grad_accum); give more prompts or a smaller batch"
        )
    total = steps_per_epoch * config.epochs
    return steps_per_epoch, total if config.max_steps is None else min(total, config.max_steps)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch))
    return torch.randperm(n, generator=generator).tolist()


def _canvas(tokenizer, prompts: list[str], gen_length: int, mask_id: int):
    """The prompts' left-padded canvas on the host: ``(ids, mask)``. Built and checked on the
    host, then copied: the checks read values, which on the device would wait for the step's
    queued work (so is the block layout)."""
    ids, mask = encode_prompts(tokenizer, prompts, chat_template=True, device="cpu")
    canvas = build_canvas(ids, mask, gen_length, mask_id)
    return canvas.x, canvas.attention_mask


def block_length_for(model, block_length: int | None) -> int | None:
    """The block length the objective lays the canvas out with: for a block-diffusion model
    ``block_length``, or its sampler's default when None; None (bidirectional) for any other
    model, which refuses a ``block_length``."""
    if is_block_diffusion(model):
        return LLADA2_REFERENCE.block_length if block_length is None else block_length
    if block_length is not None:
        raise ValueError(
            f"block_length={block_length} is for block-diffusion models (LLaDA2); "
            f"{type(model).__name__} attends bidirectionally: leave block_length unset"
        )
    return None


def _prompt_lengths(tokenizer, prompts: list[str]) -> list[int]:
    """Tokens of each prompt as the canvas encodes it (chat template included)."""
    _, mask = encode_prompts(tokenizer, prompts, chat_template=True, device="cpu")
    return mask.sum(dim=1).tolist()


# Prompts are sorted by length within windows of this many global batches (HF's
# group_by_length uses 50): wide enough to find equal lengths, narrow enough to stay random.
GROUP_WINDOW_BATCHES = 50


def _grouped_by_length(
    order: list[int], lengths: list[int], global_batch: int, seed: int, epoch: int
) -> list[int]:
    """``order`` with each global batch of similar-length prompts: the epoch's full batches are
    sorted by length within windows of ``GROUP_WINDOW_BATCHES`` batches, and each window's
    batches shuffled (seeded by ``seed`` and ``epoch``); the dropped tail stays last."""
    full = len(order) // global_batch * global_batch
    window = GROUP_WINDOW_BATCHES * global_batch
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch + 500_000))
    grouped = []
    for start in range(0, full, window):
        ranked = sorted(order[start : min(start + window, full)], key=lambda i: lengths[i])
        batches = [ranked[i : i + global_batch] for i in range(0, len(ranked), global_batch)]
        for k in torch.randperm(len(batches), generator=generator).tolist():
            grouped += batches[k]
    return grouped + order[full:]


class _Data:
    """Which prompts and sentences each (step, micro-step, rank) gets."""

    def __init__(
        self,
        config,
        runtime,
        tokenizer,
        prompts,
        benign_prompts,
        sentences,
        mask_id,
        eos_id=None,
        *,
        block_length=None,
        pad_id=None,
    ):
        self.config, self.runtime, self.tokenizer = config, runtime, tokenizer
        self.prompts, self.benign_prompts = list(prompts), list(benign_prompts)
        for argument, texts in (("prompts", self.prompts), ("benign_prompts", self.benign_prompts)):
            check_no_mask_in_prompts(
                tokenizer, texts, mask_id, chat_template=True, argument=argument
            )
        self.refusals, self.harmful = encode_sentences(tokenizer, sentences)
        self.mask_id, self.eos_id = mask_id, eos_id
        self.block_length, self.pad_id = block_length, mask_id if pad_id is None else pad_id
        self.defense = defense_for(config.defense)
        self.global_batch = runtime.world * config.batch_size * config.grad_accum
        self.steps_per_epoch, self.steps = run_length(config, runtime.world, len(self.prompts))
        self._orders: dict[int, list[int]] = {}
        self._lengths = _prompt_lengths(tokenizer, self.prompts) if config.group_by_length else []

    def longest_sentence(self) -> int:
        return max(len(s) for s in self.refusals + self.harmful)

    def _positions(self, step: int, micro: int) -> tuple[int, list[int]]:
        """The epoch and this rank's places in the epoch order."""
        epoch, within = divmod(step, self.steps_per_epoch)
        first = within * self.global_batch
        first += (micro * self.runtime.world + self.runtime.rank) * self.config.batch_size
        return epoch, list(range(first, first + self.config.batch_size))

    def _order(self, epoch: int) -> list[int]:
        """The epoch's prompt order (cached for the epoch at hand)."""
        if epoch not in self._orders:
            order = _epoch_order(len(self.prompts), self.config.seed, epoch)
            if self.config.group_by_length:
                order = _grouped_by_length(
                    order, self._lengths, self.global_batch, self.config.seed, epoch
                )
            self._orders = {epoch: order}
        return self._orders[epoch]

    def window(self) -> tuple[int, int]:
        """The offsets the defense's objective scores."""
        return self.defense.window(self.config)

    def batch(self, step: int, micro: int) -> AlignBatch | EosBatch:
        epoch, places = self._positions(step, micro)
        order = self._order(epoch)
        draws = [random.Random(f"{self.config.seed}:{epoch}:{place}") for place in places]
        ids, mask = _canvas(
            self.tokenizer,
            [self.prompts[order[place]] for place in places],
            self.config.gen_length,
            self.mask_id,
        )
        return self._laid_out(self.defense.batch(self, ids, mask, draws))

    def _laid_out(self, batch):
        """``batch`` on the device, on ``block_generate``'s canvas for a block model."""
        if self.block_length is not None:
            batch = lay_out_blocks(batch, self.block_length, self.mask_id, self.pad_id)
        return batch.to(self.runtime.device)

    def benign(self, step: int, micro: int):
        """The benign prompts of (step, micro-step, this rank): the list walked in order."""
        epoch, places = self._positions(step, micro)
        start, n = epoch * self.steps_per_epoch * self.global_batch, len(self.benign_prompts)
        prompts = [self.benign_prompts[(start + place) % n] for place in places]
        ids, mask = _canvas(self.tokenizer, prompts, self.config.gen_length, self.mask_id)
        return self._laid_out(ResponseCanvas(ids, mask, self.config.gen_length))


# Checkpoints --------------------------------------------------------------------------------

_STATE_OPTIONS = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def _save_checkpoint(
    folder: Path, models: _Models, optimizer, step: int, settings: dict, runtime: Runtime
):
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
        state = {"step": step, "settings": settings}
        (staging / "state.json").write_text(json.dumps(state) + "\n")

    write_folder(folder, fill)


def _read_checkpoint_file(path: Path, read: Callable[[Path], object]):
    """``read(path)``; a damaged file is named, with the ways to start over."""
    # Broad: safetensors, torch's zip reader and its unpickler each raise their own types.
    try:
        return read(path)
    except Exception as err:
        raise ValueError(f"cannot resume: {path} is unreadable ({err}); {START_OVER}") from err


def _load_checkpoint(folder: Path, models: _Models, optimizer, device) -> None:
    """Restores the trainable weights, the optimizer and the RNG of a checkpoint."""
    weights = _read_checkpoint_file(folder / "trainable.safetensors", load_file)
    optim = _read_checkpoint_file(folder / "optimizer.pt", _load_tensors)
    set_state_dict(
        models.unwrapped,
        optimizer,
        model_state_dict=weights,
        optim_state_dict=optim,
        options=dataclasses.replace(_STATE_OPTIONS, cpu_offload=False, strict=False),
    )
    # set_state_dict first gives every parameter an optimizer state (a zero step); one the
    # checkpoint has none for (an expert's adapter no token reached yet) must start fresh, as
    # in the uninterrupted run, or its first update's bias correction counts that step.
    saved = set(optim.get("state", {}))
    for name, param in models.unwrapped.named_parameters():
        if param.requires_grad and name not in saved:
            optimizer.state.pop(param, None)
    rng = _read_checkpoint_file(folder / "rng.pt", _load_tensors)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"])


def _load_tensors(path: Path):
    return torch.load(path, weights_only=True)


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
            shutil.copyfile(path, target / path.name)  # not copy2: the umask sets its mode


# Training -----------------------------------------------------------------------------------

# What a step sums over its rows on the device, read back once per step.
_SUMS = ("R_plus", "R_minus", "KL", "benign_KL", "loss", "tokens")


def _eos_id(model, tokenizer, defense: str) -> int:
    """The EOS id ``defense`` (A2D) supervises: the model config's, else the tokenizer's."""
    eos = model_token_id(model, "eos_token_id", tokenizer.eos_token_id)
    if eos is None:
        raise ValueError(
            f"defense={defense!r} needs an EOS id: the model config and tokenizer have none"
        )
    return eos


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _gradient_sync(models: _Models, last_micro_step: bool):
    """DDP all-reduces gradients on the last micro-step only."""
    no_sync = getattr(models.trained, "no_sync", None)
    return contextlib.nullcontext() if last_micro_step or no_sync is None else no_sync()


def _forward_backward(
    models: _Models, data: _Data, config: AlignConfig, step: int, micro: int
) -> torch.Tensor:
    """One micro-batch: the objective, its backward (scaled to the step's rows), and its sums
    (``_SUMS``) as a float64 device tensor. Nothing here reads a device value on the host but
    ``token_logprobs``'s range check of the sentence ids (one read per call)."""
    batch = data.batch(step, micro)
    head = models.gathered_head()
    terms = data.defense.terms(models, head, batch, data.window())
    loss = terms.loss(config.beta).sum()
    benign_kl = torch.zeros((), device=loss.device)
    if config.benign_beta > 0:
        benign = data.benign(step, micro)
        benign_kl = response_kl(
            models.policy, models.reference, head, models.logits_shift, benign
        ).sum()
        loss = loss + config.benign_beta * benign_kl
    loss = loss + models.take_aux_loss(batch.input_ids.shape[0])
    (loss / (config.batch_size * config.grad_accum)).backward()
    parts = (terms.reward_plus.sum(), terms.reward_minus.sum(), terms.kl.sum(), benign_kl, loss)
    sums = torch.stack([part.detach().double() for part in parts])
    return torch.cat([sums, sums.new_tensor([batch.input_ids.numel()])])


def _train_step(
    models: _Models, data: _Data, optimizer, config: AlignConfig, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over ``grad_accum`` micro-batches: this process's sums and the
    clipped gradient norm, both left on the device."""
    sums = torch.zeros(len(_SUMS), dtype=torch.float64, device=data.runtime.device)
    for micro in range(config.grad_accum):
        last = micro == config.grad_accum - 1
        with _gradient_sync(models, last), _autocast(data.runtime.device):
            sums += _forward_backward(models, data, config, step, micro)
    grad_norm = torch.nn.utils.clip_grad_norm_(models.parameters(), config.clip)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return sums, grad_norm


def _step_record(
    step: int, sums: torch.Tensor, grad_norm: torch.Tensor, began: float, optimizer, data: _Data
) -> dict:
    """The step's metrics line: the sums of every process, read on the host once."""
    if data.runtime.distributed:
        dist.all_reduce(sums)
    *totals, norm = torch.cat([sums, grad_norm.detach().reshape(1).to(sums)]).tolist()
    seconds = time.perf_counter() - began
    totals = dict(zip(_SUMS, totals, strict=True))
    rows = data.global_batch
    record = {name: totals[name] / rows for name in _SUMS[:-1]}
    return {
        "step": step,
        **record,
        "R": record["R_plus"] - record["R_minus"],
        "grad_norm": norm,
        "lr": optimizer.param_groups[0]["lr"],
        "prompts_per_s": rows / seconds,
        "tokens_per_s": totals["tokens"] / seconds,
        "peak_memory_bytes": _peak_memory(data.runtime.device),
    }


def _resume_point(config: AlignConfig, runtime: Runtime, settings: dict, n_prompts: int) -> int:
    """The step to start from: the checkpoint's, under the resume rules, else 0."""
    checkpoint = Path(config.output_dir) / "checkpoint"
    if not (config.resume and checkpoint.exists()):
        return 0
    return resume_step(checkpoint, settings, run_length(config, runtime.world, n_prompts)[1])


def _open_output(out: Path, config: AlignConfig, start: int, runtime: Runtime) -> None:
    """Writes the run's settings; keeps the log of the steps before ``start``, or starting over
    empties it and drops an earlier run's checkpoint (a later resume must not pick it up)."""
    if not runtime.main:
        return
    (out / "align_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    if start:
        trim_metrics(out / "metrics.jsonl", start)
        print(f"resuming from step {start} ({out / 'checkpoint'})")
    else:
        (out / "metrics.jsonl").write_text("")
        if (out / "checkpoint").exists():
            shutil.rmtree(out / "checkpoint")


def _interrupted(out: Path, done: int, saved: int) -> TrainingInterrupted:
    """What a Ctrl-C after ``done`` steps says, the last checkpoint at step ``saved``. One
    process saves one at ``done`` first when the Ctrl-C came between steps; several keep their
    last (saving takes all of them, and each may be stopping at another step)."""
    if saved:
        return TrainingInterrupted(
            f"interrupted at step {done}; rerun the same command to resume from step {saved} "
            f"({out / 'checkpoint'})"
        )
    return TrainingInterrupted(
        f"interrupted at step {done}, before any checkpoint (--save-every N keeps one); "
        "rerun to start over"
    )


def _log(record: dict, out: Path, bar, runtime: Runtime) -> None:
    if runtime.main:
        with open(out / "metrics.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
        bar.set_postfix(R=f"{record['R']:.1f}", KL=f"{record['KL']:.2f}")


def _progress(config: AlignConfig, runtime: Runtime, start: int, steps: int):
    return tqdm(
        range(start, steps),
        initial=start,
        total=steps,
        desc="MOSA",
        unit="step",
        disable=not (config.progress and runtime.main),
    )


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
    sentences = sentences or Sentences()
    texts = data_fingerprint(prompts, benign_prompts, (sentences.refusals, sentences.harmful))
    settings = run_settings(config, runtime.world, texts)
    with exclusive(out, runtime):
        start = _resume_point(config, runtime, settings, len(prompts))
        torch.manual_seed(config.seed)
        tokenizer = load_tokenizer(config.model)
        models = _Models(config, runtime)
        mask_id = models.base.mask_token_id
        needs_eos = defense_for(config.defense).needs_eos
        eos_id = _eos_id(models.base, tokenizer, config.defense) if needs_eos else None
        block_length = block_length_for(models.base, config.block_length)
        data = _Data(
            config, runtime, tokenizer, prompts, benign_prompts, sentences, mask_id, eos_id,
            block_length=block_length, pad_id=models.base.pad_token_id,
        )  # fmt: skip
        check_window(config.window, config.gen_length, data.longest_sentence())
        optimizer = torch.optim.AdamW(
            models.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        if start:
            _load_checkpoint(out / "checkpoint", models, optimizer, runtime.device)
        _open_output(out, config, start, runtime)
        bar = _progress(config, runtime, start, data.steps)
        saved = done = start
        stepping = False  # inside a step: the weights and optimizer may be half-updated
        try:
            with interrupt_between_steps() as check_interrupt:
                for step in bar:
                    stepping, began = True, time.perf_counter()
                    sums, grad_norm = _train_step(models, data, optimizer, config, step)
                    record = _step_record(step, sums, grad_norm, began, optimizer, data)
                    _log(record, out, bar, runtime)
                    stepping, done = False, step + 1
                    if on_step is not None:
                        on_step(record)
                    if config.save_every and done % config.save_every == 0 and done < data.steps:
                        _save_checkpoint(
                            out / "checkpoint", models, optimizer, done, settings, runtime
                        )
                        saved = done
                    check_interrupt()
        except KeyboardInterrupt:
            bar.close()
            if done > saved and not stepping and not runtime.distributed:
                _save_checkpoint(out / "checkpoint", models, optimizer, done, settings, runtime)
                saved = done
            raise _interrupted(out, done, saved) from None
        bar.close()
        _save_final(out, models, config, runtime)
        if runtime.distributed:
            dist.barrier()
    return out

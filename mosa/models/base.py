"""``DiffusionLM``: the forward pass, caching, checkpointing and saving the families share.

A family (``LLaDAModel``, ``DreamModel``, ``LLaDA2Model``, ``LLaDAMoEModel``) only lays out its modules under the checkpoint's
parameter names and says how it embeds tokens, where its blocks and final norm are, what its
output head is, and how it numbers rotary positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .cache import KVCache
from .files import write_checkpoint
from .layers import AttentionInputs, RMSNorm, rotary_tables
from .moe import load_balancing_loss

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9


@dataclass
class DiffusionLMOutput:
    """What ``DiffusionLM.forward`` returns.

    Attributes:
        hidden_states: ``[B, L, d]`` after the final norm, for the positions that were run.
        logits: ``[B, L, V]`` when ``return_logits=True`` (HF-style ``.logits``), else None.
            Position i holds the distribution of token i: LLaDA applies the head at i, Dream at
            i - 1 (``DiffusionLM.logits_shift``), position 0 keeping its own, as Dream's
            generation code does.
        cache: the ``KVCache`` that was filled or updated, when one was asked for or given.
        aux_loss: a scalar the model adds to any training loss (an MoE router's load
            balancing), None for the dense families; the MOSA trainer adds it when present.
    """

    hidden_states: torch.Tensor
    logits: torch.Tensor | None = None
    cache: KVCache | None = None
    aux_loss: torch.Tensor | None = None


def _key_valid(
    attention_mask: torch.Tensor | None, inputs: torch.Tensor, name: str
) -> torch.Tensor | None:
    """``attention_mask`` as bool, checked against the ``[B, L]`` of ``inputs`` (``input_ids``
    or ``inputs_embeds``, as ``name`` says)."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(
            f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}"
        )
    if attention_mask.shape != inputs.shape[:2]:
        raise ValueError(
            f"attention_mask must have {name}' shape {tuple(inputs.shape[:2])}, "
            f"got {tuple(attention_mask.shape)}"
        )
    if attention_mask.device != inputs.device:
        raise ValueError(
            f"attention_mask is on {attention_mask.device} but {name} on {inputs.device}"
        )
    return attention_mask if attention_mask.dtype == torch.bool else attention_mask != 0


class DiffusionLM(nn.Module):
    """A bidirectional masked-diffusion transformer that loads Hugging Face checkpoints.

    Subclasses set ``config`` and lay out their modules so that ``state_dict()`` keys are the
    published checkpoint names; LoRA through ``peft`` then targets those names directly.
    """

    logits_shift: ClassVar[int]
    """Hidden state ``i - logits_shift`` predicts token ``i`` (LLaDA 0, Dream 1)."""
    rope_in_fp32: ClassVar[bool]
    lora_target_modules: ClassVar[str]
    """Regular expression (peft ``target_modules``) for every attention and MLP projection."""
    lora_expert_modules: ClassVar[str | None] = None
    """The routed experts' projections (MoE families), which ``lora_targets(experts=True)``
    adds; None for a family without routed experts."""

    def __init__(self, config: Any):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        self.name_or_path: str | None = None
        self._routers: list[nn.Module] = []

    # Family hooks ------------------------------------------------------------------------

    def get_input_embeddings(self) -> nn.Embedding:
        raise NotImplementedError

    @property
    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def final_norm(self) -> RMSNorm:
        raise NotImplementedError

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """The output head ``[V, d]`` (the embedding when the checkpoint ties them)."""
        raise NotImplementedError

    @property
    def lm_head_bias(self) -> torch.Tensor | None:
        """The head's bias ``[V]``, None for the published checkpoints."""
        return None

    def rotary_positions(self, key_valid: torch.Tensor | None, length: int) -> torch.Tensor:
        """Rotary position of every slot, ``[1 or B, length]``: the physical index."""
        device = self.get_input_embeddings().weight.device
        return torch.arange(length, device=device)[None]

    # Properties -------------------------------------------------------------------------

    @property
    def mask_token_id(self) -> int | None:
        return self.config.mask_token_id

    @property
    def eos_token_id(self) -> int | tuple[int, ...] | None:
        return self.config.eos_token_id

    @property
    def pad_token_id(self) -> int | None:
        return self.config.pad_token_id

    @property
    def vocab_size(self) -> int:
        """Width of the logits (rows of the head)."""
        return self.config.logits_size

    @property
    def device(self) -> torch.device:
        return self.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.get_input_embeddings().weight.dtype

    def lora_targets(self, experts: bool = False) -> str:
        """peft ``target_modules``: ``lora_target_modules``, plus the routed experts' projections
        when ``experts`` (the MoE families' ``lora_experts`` option)."""
        if not experts:
            return self.lora_target_modules
        if self.lora_expert_modules is None:
            raise ValueError(
                f"lora_experts=True wraps routed experts, which {type(self).__name__} does not "
                "have; leave lora_experts False for a dense model"
            )
        return f"(?:{self.lora_target_modules})|(?:{self.lora_expert_modules})"

    def keep_router_outputs(self, keep: bool = True) -> int:
        """Makes every MoE block keep its router's outputs in training forwards (gradients on),
        so that ``forward`` returns the load-balancing loss as ``aux_loss``; ``keep=False``
        stops it (the default: nothing kept, nothing computed). Returns the number of MoE
        blocks."""
        routers = [m for m in self.modules() if hasattr(m, "keep_routing")]
        for router in routers:
            router.keep_routing, router.routing = keep, None
        self._routers = routers if keep else []
        return len(routers)

    def _router_aux_loss(self, key_valid: torch.Tensor | None) -> torch.Tensor | None:
        """``router_aux_loss_coef`` times the mean over MoE layers of their load-balancing loss
        (``mosa.models.moe.load_balancing_loss``) over the valid tokens; the kept outputs are
        released."""
        kept = [router.routing for router in self._routers if router.routing is not None]
        for router in self._routers:
            router.routing = None
        if not kept:
            return None
        valid = None if key_valid is None else key_valid.reshape(-1)
        losses = [load_balancing_loss(probs, ids, valid) for probs, ids in kept]
        return self.config.router_aux_loss_coef * torch.stack(losses).mean()

    # Forward ----------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        cache: KVCache | None = None,
        start: int | torch.Tensor | None = None,
        return_cache: bool = False,
        return_logits: bool = False,
        block_length: int | None = None,
    ) -> DiffusionLMOutput:
        """Runs the model on ``input_ids`` ``[B, L]``.

        Args:
            inputs_embeds: ``[B, L, d]`` input embeddings instead of ``input_ids`` (exactly one
                of the two), e.g. to differentiate with respect to the input tokens.
            attention_mask: ``[B, L]``, nonzero/True at real tokens, 0 at padding (left padding
                is the common case; padded keys are never attended to). Not used with a cache,
                whose ``key_valid`` already says it.
            cache: run ``input_ids`` as the slice ``[start, start + L)`` of the cached
                sequence: its keys/values overwrite those slots and it attends to the cache's
                slots ``[0, max(cache.length, start + L))`` (see ``mosa.models.cache``).
            start: first position of the slice; required with ``cache`` and with ``start <=
                cache.length`` (no gaps). May be a 0-d integer tensor on the model's device
                when the cache already holds the whole sequence (``length == capacity``): the
                slice then moves along the sequence without a new CUDA graph or a host read,
                and keeping ``start + L <= capacity`` is the caller's duty.
            return_cache: also return a new ``KVCache`` of the whole sequence.
            return_logits: also return the logits (HF compatibility; costs a ``[B, L, V]``
                tensor — the fused ops take ``hidden_states`` and ``lm_head_weight`` instead).
            block_length: block-causal attention (block diffusion, LLaDA2): a position attends
                to its own block and to earlier ones, blocks of ``block_length`` counted from
                slot 0. With a cache, the slice must end the attended keys (``start + L ==
                max(cache.length, start + L)``, e.g. after ``cache.truncate(start)``). None:
                bidirectional.
        """
        given, name = self._check_inputs(input_ids, inputs_embeds)
        batch, length = given.shape[:2]
        if cache is None:
            if start is not None:
                raise ValueError("start is only meaningful with cache=")
            key_valid = _key_valid(attention_mask, given, name)
            positions = self.rotary_positions(key_valid, length)
            if return_cache:
                cache = KVCache.allocate(
                    len(self.blocks),
                    (batch, length, self.config.kv_heads, self.config.head_dim),
                    self.dtype,
                    key_valid,
                    positions,
                )
            start = 0
        else:
            if return_cache:
                raise ValueError("return_cache creates a new cache; do not pass cache= as well")
            if attention_mask is not None:
                raise ValueError("attention_mask is taken from the cache; pass attention_mask=None")
            self._check_slice(cache, start, batch, length)
            if isinstance(start, torch.Tensor):
                start = start + torch.arange(length, device=start.device)
                positions = cache.position_ids.index_select(1, start)
            else:
                positions = cache.position_ids[:, start : start + length]
        if cache is not None:
            if not isinstance(start, torch.Tensor):
                cache.length = max(cache.length, start + length)
            key_valid = None if cache.key_valid is None else cache.key_valid[:, : cache.length]
        cos, sin = rotary_tables(positions, self.config.rotary_dim, self.config.rope_theta)
        if block_length is not None and cache is not None and not isinstance(start, torch.Tensor):
            if start + length != cache.length:
                raise ValueError(
                    f"block_length with a cache needs the slice to end the attended keys: "
                    f"slice [{start}, {start + length}) of cache.length {cache.length}; "
                    f"call cache.truncate({start}) first"
                )
        inputs = AttentionInputs(cos, sin, self.rope_in_fp32, key_valid, cache, start, block_length)

        x = self.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds
        checkpointing = self.gradient_checkpointing and self.training and cache is None
        for block in self.blocks:
            if checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, inputs, use_reentrant=False)
            else:
                x = block(x, inputs)
        hidden = self.final_norm(x)
        aux_loss = self._router_aux_loss(key_valid) if self._routers else None

        logits = None
        if return_logits:
            if self.logits_shift and (isinstance(start, torch.Tensor) or start):
                raise ValueError(
                    f"{type(self).__name__} predicts token i from hidden state i - 1, which a slice "
                    "starting at start > 0 lacks; run the slice from start - 1 and drop its first "
                    "logits, or use hidden_states with logits_shift"
                )
            logits = F.linear(hidden, self.lm_head_weight, self.lm_head_bias)
            if self.logits_shift:
                logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return DiffusionLMOutput(
            hidden_states=hidden, logits=logits, cache=cache, aux_loss=aux_loss
        )

    def _check_inputs(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None
    ) -> tuple[torch.Tensor, str]:
        """The given one of ``input_ids`` / ``inputs_embeds``, checked, and its name."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids [B, L] and inputs_embeds [B, L, d]")
        if inputs_embeds is None:
            if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
                raise ValueError("input_ids must be a [B, L] tensor of token ids")
            if input_ids.is_floating_point():
                raise TypeError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
            return input_ids, "input_ids"
        width = self.get_input_embeddings().embedding_dim
        if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3:
            raise ValueError(f"inputs_embeds must be a [B, L, {width}] tensor of embeddings")
        if inputs_embeds.shape[-1] != width:
            raise ValueError(
                f"inputs_embeds must have the embedding width {width} last, "
                f"got shape {tuple(inputs_embeds.shape)}"
            )
        if inputs_embeds.dtype != self.dtype or inputs_embeds.device != self.device:
            raise TypeError(
                f"inputs_embeds must be {self.dtype} on {self.device} like the model, "
                f"got {inputs_embeds.dtype} on {inputs_embeds.device}"
            )
        return inputs_embeds, "inputs_embeds"

    def _check_slice(
        self, cache: KVCache, start: int | torch.Tensor | None, batch: int, length: int
    ) -> None:
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache, got {type(cache).__name__}")
        if len(cache.keys) != len(self.blocks):
            raise ValueError(f"cache has {len(cache.keys)} layers, the model {len(self.blocks)}")
        if batch != cache.batch_size:
            raise ValueError(f"input_ids has batch {batch}, the cache {cache.batch_size}")
        if isinstance(start, torch.Tensor):
            if start.dim() != 0 or start.is_floating_point() or start.device != self.device:
                raise TypeError(
                    f"a tensor start must be a 0-d integer tensor on {self.device}, got "
                    f"{start.dtype} shaped {tuple(start.shape)} on {start.device}"
                )
            if cache.length != cache.capacity or length > cache.capacity:
                raise ValueError(
                    f"a tensor start needs a cache holding the whole sequence (length "
                    f"{cache.length} of capacity {cache.capacity}) and a slice no longer than "
                    f"it (got {length}); pass start as an int"
                )
            return
        if isinstance(start, bool) or not isinstance(start, int):
            raise TypeError(f"start must be an int position with cache=, got {start!r}")
        if not 0 <= start <= cache.length:
            raise ValueError(
                f"start={start} must lie in [0, cache.length={cache.length}] so no slot is left unwritten"
            )
        if start + length > cache.capacity:
            raise ValueError(
                f"slice [{start}, {start + length}) runs past the cache capacity {cache.capacity}"
            )

    # Training switches --------------------------------------------------------------------

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict | None = None
    ) -> None:
        """Recomputes each block in the backward pass instead of storing its activations.

        Non-reentrant ``torch.utils.checkpoint``; only in training mode and without a cache.
        ``gradient_checkpointing_kwargs`` is accepted for Hugging Face/peft callers, and only
        ``use_reentrant=False`` is supported.
        """
        kwargs = dict(gradient_checkpointing_kwargs or {})
        if kwargs.pop("use_reentrant", False) or kwargs:
            raise ValueError(
                f"only gradient_checkpointing_kwargs={{'use_reentrant': False}} is supported, got {gradient_checkpointing_kwargs}"
            )
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Random weights: linear and embedding weights ~ N(0, std), biases 0, norms 1, every
        other weight (an MoE router's) ~ N(0, std), buffers (its expert bias) 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                module.weight.normal_(0.0, std, generator=generator)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
                if module.bias is not None:
                    module.bias.zero_()
            elif not isinstance(module, nn.Linear | nn.Embedding):
                for param in module.parameters(recurse=False):
                    param.normal_(0.0, std, generator=generator)
            for buffer in module.buffers(recurse=False):
                buffer.zero_()  # an MoE router's expert bias starts at 0, as published

    # Saving -----------------------------------------------------------------------------

    def checkpoint_shapes(self) -> dict[str, torch.Size]:
        """Name and shape of every tensor of this model's checkpoint."""
        with torch.device("meta"):
            reference = type(self)(self.config)
        return {name: t.shape for name, t in reference.state_dict().items()}

    def save_pretrained(
        self, folder: str | Path, *, max_shard_size: int = DEFAULT_MAX_SHARD_BYTES
    ) -> Path:
        """Writes ``config.json`` and safetensors weights in the published layout, atomically.

        Weights larger than ``max_shard_size`` bytes are split into shards
        ``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json``. Raises
        ValueError when the model holds tensors a checkpoint does not (e.g. peft adapters:
        merge them or save the adapter with ``PeftModel.save_pretrained``).
        """
        state = self.state_dict()
        expected = self.checkpoint_shapes()
        foreign = [name for name in state if name not in expected]
        if foreign or len(state) != len(expected):
            raise ValueError(
                f"the model holds tensors that are not checkpoint weights ({', '.join(foreign[:3])}); "
                "merge adapters first (peft merge_and_unload) or save them with PeftModel.save_pretrained"
            )
        config = self.config.to_dict()
        config["torch_dtype"] = str(self.dtype).removeprefix("torch.")
        folder = Path(folder)
        write_checkpoint(folder, config, state, max_shard_size)
        return folder

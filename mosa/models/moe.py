"""Sparse mixture-of-experts blocks of LLaDA2.x and LLaDA-MoE (docs/DESIGN.md §4.4).

The routed experts stay separate ``nn.Linear`` modules (the checkpoints' names
``experts.{e}.{gate,up,down}_proj.weight``, peft targets, ``from_hf`` adoption of a
transformers model's modules), but their weights live in one packed tensor per projection,
``[E, I, d]`` / ``[E, d, I]``, that each expert's ``weight`` Parameter is a view of; the
grouped GEMMs read the packs, so memory is not doubled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mosa_kernels import moe_expert_loop, moe_swiglu, route_grouped_sigmoid, route_softmax

from .layers import swiglu

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class _LayoutChanges:
    """Counts submodule replacements inside one ``RoutedExperts`` (peft wrapping, adoption),
    so its forward re-examines its experts only after one happened."""

    def __init__(self):
        self.version = 0


class ExpertMLP(nn.Module):
    """One SwiGLU expert: ``down_proj(silu(gate_proj(x)) * up_proj(x))``, no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    @classmethod
    def adopt(cls, module: nn.Module) -> ExpertMLP:
        """An ``ExpertMLP`` holding ``module``'s own projection modules (no copy), e.g. a
        transformers expert's ``gate_proj``/``up_proj``/``down_proj``."""
        missing = [
            name for name in PROJECTIONS if not isinstance(getattr(module, name, None), nn.Module)
        ]
        if missing:
            raise TypeError(
                f"an expert must have {', '.join(PROJECTIONS)} modules; "
                f"{type(module).__name__} lacks {', '.join(missing)}"
            )
        expert = cls.__new__(cls)
        nn.Module.__init__(expert)
        for name in PROJECTIONS:
            setattr(expert, name, getattr(module, name))
        return expert

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        changes = self.__dict__.get("_layout_changes")
        if changes is not None and isinstance(value, nn.Module):
            changes.version += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


class RoutedExperts(nn.ModuleList):
    """The routed experts of one layer; ``self(x, expert_ids, weights)`` runs ``moe_swiglu``.

    The packs are made at construction, after ``load_state_dict`` and ``.to()``, by
    ``pack()`` / ``pack_experts``, and else by the next forward; each expert's weight
    Parameter is re-pointed (``.data``) to its slice, so anything else holding the same
    Parameter objects (a transformers model adopted by ``from_hf``, peft, an optimiser) shares
    the packed storage. Each forward checks in O(1) that the packs are still what the first and
    last experts' weights view (adoption, or a weight replaced by hand, breaks that) and packs
    again if not. Experts whose projections are not plain ``nn.Linear`` (peft
    LoRA wrappers) run one by one through their modules (``moe_expert_loop``). When autograd
    needs the expert weights' gradients (full fine-tuning), the weights are stacked afresh
    each forward, a differentiable copy.
    """

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int):
        super().__init__(ExpertMLP(hidden_size, intermediate_size) for _ in range(num_experts))
        self._layout_changes = _LayoutChanges()
        for expert in self:
            expert.__dict__["_layout_changes"] = self._layout_changes
        self._checked_version = -1
        self._plain = False
        self._packs: tuple[torch.Tensor, ...] | None = None
        self.register_load_state_dict_post_hook(_pack_after_load)
        self.pack()

    def __setitem__(self, idx: int, module: nn.Module) -> None:
        """Puts an expert in place; a module that is not an ``ExpertMLP`` is adopted
        (``ExpertMLP.adopt``: its projections are kept, not copied)."""
        if not isinstance(module, ExpertMLP):
            module = ExpertMLP.adopt(module)
        module.__dict__["_layout_changes"] = self._layout_changes
        super().__setitem__(idx, module)
        self._layout_changes.version += 1

    def forward(
        self, x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """``[N, d]`` hidden states, ``int64[N, k]`` experts and ``[N, k]`` weights -> ``[N, d]``."""
        if not self._all_plain_linear():
            return moe_expert_loop(x, expert_ids, weights, list(self))
        stacked = self.stacked_weights()
        if torch.is_autocast_enabled(x.device.type):
            # What nn.Linear experts would do under autocast (the trainer's bf16 on CUDA); a
            # no-op for a model already in that dtype.
            dtype = torch.get_autocast_dtype(x.device.type)
            x, stacked = x.to(dtype), tuple(w.to(dtype) for w in stacked)
        return moe_swiglu(x, expert_ids, weights, *stacked)

    def stacked_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(gate [E, I, d], up [E, I, d], down [E, d, I])``: the packs (made if needed), or
        a differentiable stack when autograd needs the expert weights or they cannot be
        packed (meta tensors, mixed devices or dtypes)."""
        if torch.is_grad_enabled() and self[0].gate_proj.weight.requires_grad:
            return self._stack()
        if not self._packs_current() and not self.pack():
            return self._stack()
        return self._packs

    def pack(self) -> bool:
        """Packs the expert weights (one copy) and re-points each weight to its slice;
        False, changing nothing, where they cannot be packed. The packs are ordinary tensors
        even when this runs under ``torch.inference_mode`` (a first forward there), so the
        parameters stay usable by autograd afterwards."""
        weights = [self._weights(name) for name in PROJECTIONS]
        first = weights[0][0]
        if first.device.type == "meta" or any(
            w.device != first.device or w.dtype != first.dtype for ws in weights for w in ws
        ):
            return False
        packs = []
        with torch.inference_mode(False), torch.no_grad():
            for params in weights:
                stacked = torch.stack([p.detach() for p in params])
                for e, param in enumerate(params):
                    param.data = stacked[e]
                packs.append(stacked)
        self._packs = tuple(packs)
        return True

    def _apply(self, fn, recurse=True):
        # .to() / .float() give the weights new tensors: packed again at once, so the old
        # packs' memory goes now and the parameters stay the same tensors from here on.
        result = super()._apply(fn, recurse)
        if not self._packs_current():
            self._packs = None
            self.pack()
        return result

    def _packs_current(self) -> bool:
        if self._packs is None or len(self) != self._packs[0].shape[0]:
            return False
        for e in (0, len(self) - 1):
            expert = self[e]
            for name, pack in zip(PROJECTIONS, self._packs, strict=True):
                weight = expert._modules[name].weight
                offset = e * pack.stride(0) * pack.element_size()
                if (
                    weight.data_ptr() != pack.data_ptr() + offset
                    or weight.dtype != pack.dtype
                    or weight.device != pack.device
                    or weight.shape != pack.shape[1:]
                ):
                    return False
        return True

    def _all_plain_linear(self) -> bool:
        """Whether every projection is a bias-free ``nn.Linear`` (not a LoRA wrapper);
        rescanned only after a submodule replacement."""
        if self._checked_version != self._layout_changes.version:
            self._plain = all(
                type(m) is nn.Linear and m.bias is None
                for expert in self
                for m in (expert._modules[name] for name in PROJECTIONS)
            )
            self._checked_version = self._layout_changes.version
        return self._plain

    def _weights(self, name: str) -> list[torch.Tensor]:
        return [expert._modules[name].weight for expert in self]

    def _stack(self) -> tuple[torch.Tensor, ...]:
        return tuple(torch.stack(self._weights(name)) for name in PROJECTIONS)


def _pack_after_load(experts: RoutedExperts, incompatible_keys) -> None:
    """``load_state_dict`` post-hook: ``assign=True`` (how checkpoints are loaded) puts new
    tensors in place; packing them now keeps the parameters stable from the first forward on."""
    if not experts._packs_current():
        experts.pack()


def pack_experts(module: nn.Module) -> int:
    """Packs every ``RoutedExperts`` inside ``module`` (e.g. after ``from_hf`` adopted a model's
    modules, so that the first forward does not change the parameters' storage); returns how
    many it packed."""
    packed = 0
    for child in module.modules():
        if isinstance(child, RoutedExperts) and (child._packs_current() or child.pack()):
            packed += 1
    return packed


class LLaDA2Gate(nn.Module):
    """LLaDA2's router: fp32 logits ``h @ weight.T``, then ``route_grouped_sigmoid`` with
    ``expert_bias`` (a persistent buffer, in the checkpoints) steering the selection."""

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        n_group: int,
        topk_group: int,
        routed_scaling_factor: float,
    ):
        super().__init__()
        self.top_k, self.n_group, self.topk_group = top_k, n_group, topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        self.register_buffer("expert_bias", torch.zeros(num_experts))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h [N, d]`` -> ``(expert_ids int64[N, k], weights float32[N, k])``."""
        return self.route(self.logits(h))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """``h [N, d]`` -> fp32 router logits ``[N, E]``."""
        return F.linear(h.float(), self.weight.float())

    def route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The router's choice from its logits (``route_grouped_sigmoid``)."""
        return route_grouped_sigmoid(
            logits,
            self.expert_bias,
            top_k=self.top_k,
            n_group=self.n_group,
            topk_group=self.topk_group,
            routed_scaling_factor=self.routed_scaling_factor,
        )


class KeptRouting(nn.Module):
    """An MoE block that keeps its router's outputs for a load-balancing loss when asked.

    ``keep_routing`` (False by default, so nothing is kept and nothing costs) is set by
    ``DiffusionLM.keep_router_outputs``; a forward with it set and gradients on leaves
    ``routing = (probabilities [N, E], expert_ids int64[N, k])``, the tokens in ``h``'s
    flattened order, for ``load_balancing_loss``.
    """

    keep_routing = False
    routing: tuple[torch.Tensor, torch.Tensor] | None = None

    def _keep(self, probabilities: torch.Tensor, expert_ids: torch.Tensor) -> None:
        self.routing = (probabilities, expert_ids)

    def _keeps(self) -> bool:
        return self.keep_routing and torch.is_grad_enabled()


def load_balancing_loss(
    probabilities: torch.Tensor, expert_ids: torch.Tensor, valid: torch.Tensor | None
) -> torch.Tensor:
    """The Switch / OLMoE load-balancing loss ``E * sum_e f_e * P_e`` of one MoE layer.

    ``f_e`` is the share of the top-k assignments (``expert_ids [N, k]``) that went to expert
    e and ``P_e`` the mean routing probability (``probabilities [N, E]``) of expert e, both
    over the tokens where ``valid`` ``[N]`` is True (all when None); 1 when balanced. ``f`` has
    no gradient; the loss reaches the router through ``P``. No host read.
    """
    num_experts, top_k = probabilities.shape[1], expert_ids.shape[1]
    if valid is None:
        weight = probabilities.new_ones(probabilities.shape[0])
    else:
        weight = valid.to(probabilities.dtype)
    tokens = weight.sum().clamp(min=1)
    counts = probabilities.new_zeros(num_experts).index_add_(
        0, expert_ids.reshape(-1), weight.repeat_interleave(top_k)
    )
    share = counts / (tokens * top_k)
    mean_probability = (probabilities * weight[:, None]).sum(dim=0) / tokens
    return num_experts * (share * mean_probability).sum()


class LLaDA2SparseMoe(KeptRouting):
    """LLaDA2.x's MoE block: routed experts weighted by ``LLaDA2Gate``, plus the shared
    experts' MLP (width ``moe_intermediate_size * num_shared_experts``) unless
    ``num_shared_experts`` is None. Names: ``gate.weight``, ``gate.expert_bias``,
    ``experts.{e}.{gate,up,down}_proj.weight``, ``shared_experts.{gate,up,down}_proj.weight``."""

    def __init__(
        self,
        hidden_size: int,
        moe_intermediate_size: int,
        num_experts: int,
        top_k: int,
        n_group: int,
        topk_group: int,
        routed_scaling_factor: float,
        num_shared_experts: int | None,
    ):
        super().__init__()
        self.experts = RoutedExperts(num_experts, hidden_size, moe_intermediate_size)
        self.gate = LLaDA2Gate(
            hidden_size, num_experts, top_k, n_group, topk_group, routed_scaling_factor
        )
        self.shared_experts = (
            None
            if num_shared_experts is None
            else ExpertMLP(hidden_size, moe_intermediate_size * num_shared_experts)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``[B, L, d]`` -> ``[B, L, d]`` in h's dtype."""
        flat = h.reshape(-1, h.shape[-1])
        logits = self.gate.logits(flat)
        expert_ids, weights = self.gate.route(logits)
        if self._keeps():  # the normalised sigmoid scores are the routing probabilities
            scores = torch.sigmoid(logits)
            self._keep(scores / scores.sum(dim=-1, keepdim=True), expert_ids)
        out = self.experts(flat, expert_ids, weights)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view(h.shape)


class LLaDAMoESparseMoe(KeptRouting):
    """LLaDA-MoE's (OLMoE-style) MoE block: ``route_softmax`` on ``gate(h)`` (logits in h's
    dtype), weights cast to h's dtype, no normalisation. Names: ``gate.weight``,
    ``experts.{e}.{gate,up,down}_proj.weight`` and, when ``expert_bias``, the buffer
    ``expert_bias``. Its shared expert sits in the decoder layer, not here."""

    def __init__(
        self,
        hidden_size: int,
        expert_intermediate_size: int,
        num_experts: int,
        top_k: int,
        expert_bias: bool,
    ):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = RoutedExperts(num_experts, hidden_size, expert_intermediate_size)
        if expert_bias:
            self.register_buffer("expert_bias", torch.zeros(num_experts))
        else:
            self.expert_bias = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``[B, L, d]`` -> ``[B, L, d]`` in h's dtype."""
        flat = h.reshape(-1, h.shape[-1])
        logits = self.gate(flat)
        expert_ids, weights = route_softmax(logits, top_k=self.top_k, expert_bias=self.expert_bias)
        if self._keeps():
            wide = torch.promote_types(logits.dtype, torch.float32)  # fp32, or float64
            self._keep(torch.softmax(logits.to(wide), dim=-1), expert_ids)
        return self.experts(flat, expert_ids, weights.to(flat.dtype)).view(h.shape)

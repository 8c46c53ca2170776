"""The model-family registry: what every layer needs to know about a family, in one table.

``FAMILIES`` maps a family's name to its ``ModelFamily``: the ``config.json`` it reads, the
module tree it builds, how ``from_hf`` adopts a transformers copy, the sampler that decodes it
and that sampler's options. Loading, ``from_hf``, ``sample_texts``, the eval runner, lm-eval
and the CLI look a family up here instead of testing classes, so a new family is one entry
(``docs/ADDING_A_MODEL.md``) and a model of no entry is refused by name rather than decoded
as another family.

The samplers live in ``mosa.sampling``, a layer above this one: entries name them as
``"module:function"`` and ``ModelFamily.sampler`` imports them when first called.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import DiffusionLM
from .config import DreamConfig, LLaDA2Config, LLaDAConfig, LLaDAMoEConfig
from .dream import DreamModel
from .llada import LLaDAModel
from .llada2 import LLaDA2Model
from .llada_moe import LLaDAMoEModel


def resolve(reference: str) -> Callable:
    """The object a ``"package.module:name"`` reference names, looked up at each call (so a
    test's monkeypatch of the module attribute is seen)."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ModelFamily:
    """One family of checkpoints mosa loads, adopts and samples.

    Attributes:
        name: the family's key in ``FAMILIES`` (lower case).
        label: how messages name it ("LLaDA").
        config_class: reads ``config.json`` (``from_dict``); its ``describes`` says whether a
            ``config.json`` is the family's (by ``model_type``, else ``architectures``, and
            for families sharing a ``model_type`` by their keys).
        model_class: the ``DiffusionLM`` that lays out the checkpoint's modules (its
            ``lora_target_modules`` are the family's LoRA targets).
        sampler: ``"module:function"`` of the sampler (prompt ids, attention mask, then
            keyword options).
        length_keyword: the sampler's name for the response length (mosa's ``gen_length``).
        trace_keyword: the sampler's flag for an output with ``sequences`` and ``commit_step``.
        sampler_options: the options ``sample_texts`` passes on (``gen_length`` included).
        eval_defaults: options a deterministic evaluation (the eval runner, lm-eval) sets
            unless told otherwise.
        diffuguard: whether DiffuGuard's sampler (LLaDA's block schedule, or
            ``block_generate``'s blocks for a block-diffusion family, with hooks) runs it.
        adopter: ``"module:function"`` that puts a transformers model's modules in place of a
            meta skeleton's (``from_hf``).
        block_diffusion: the family decodes block by block under block-causal attention
            (LLaDA2), with its own sampler rather than LLaDA's ``generate``: only
            ``mosa.block_generate`` decodes it and ``mosa.generate`` refuses it.
    """

    name: str
    label: str
    config_class: type
    model_class: type[DiffusionLM]
    sampler: str
    length_keyword: str
    trace_keyword: str
    sampler_options: tuple[str, ...]
    eval_defaults: Mapping[str, Any] = field(default_factory=dict)
    diffuguard: bool = False
    adopter: str = "mosa.models.adopt:adopt_by_name"
    block_diffusion: bool = False

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    def describes(self, config: dict[str, Any]) -> bool:
        """Whether a parsed ``config.json`` is one of this family's checkpoints."""
        return self.config_class.describes(config)

    @property
    def architecture(self) -> str:
        return self.config_class.architecture

    @property
    def lora_targets(self) -> str:
        """peft ``target_modules``: every attention and MLP projection of the layout."""
        return self.model_class.lora_target_modules

    def read_config(self, data: dict[str, Any], source: str | None = None):
        """The family's config object parsed from a ``config.json`` dict (read from the file
        ``source``, which its errors name)."""
        return self.config_class.from_dict(data, source)

    def sample(self, model, ids, mask, *, gen_length: int, trace: bool = False, **options):
        """Runs the family's sampler under mosa's common names: ``gen_length`` response tokens
        after ``ids``; with ``trace`` an output with ``sequences`` and ``commit_step``."""
        sampler = resolve(self.sampler)
        return sampler(
            model, ids, mask, **{self.length_keyword: gen_length, self.trace_keyword: trace},
            **options,
        )  # fmt: skip


# LLaDA's generate decodes dense LLaDA and LLaDA-MoE alike.
_LLADA_OPTIONS = (
    "steps", "gen_length", "block_length", "temperature", "cfg_scale", "remasking",
    "logits_eos_inf", "confidence_eos_eot_inf", "threshold", "factor", "cache", "stop_at_eos",
    "cuda_graphs", "truncate",
)  # fmt: skip

FAMILIES: dict[str, ModelFamily] = {
    "llada": ModelFamily(
        name="llada",
        label="LLaDA",
        config_class=LLaDAConfig,
        model_class=LLaDAModel,
        sampler="mosa.sampling.llada:generate",
        length_keyword="gen_length",
        trace_keyword="return_trace",
        sampler_options=_LLADA_OPTIONS,
        diffuguard=True,
    ),
    "dream": ModelFamily(
        name="dream",
        label="Dream",
        config_class=DreamConfig,
        model_class=DreamModel,
        sampler="mosa.sampling.dream:diffusion_generate",
        length_keyword="max_new_tokens",
        trace_keyword="return_dict_in_generate",
        sampler_options=(
            "steps",
            "temperature",
            "top_p",
            "top_k",
            "alg",
            "alg_temp",
            "eps",
            "truncate",
            "cuda_graphs",
            "gen_length",
        ),  # fmt: skip
        # Lowest entropy first, as Dream's own examples decode: deterministic at temperature
        # 0, unlike Dream's default "origin" (random positions).
        eval_defaults={"alg": "entropy"},
    ),
    "llada2": ModelFamily(
        name="llada2",
        label="LLaDA2",
        config_class=LLaDA2Config,
        model_class=LLaDA2Model,
        sampler="mosa.sampling.block_generate:block_generate",
        length_keyword="gen_length",
        trace_keyword="return_trace",
        sampler_options=(
            "steps",
            "gen_length",
            "block_length",
            "temperature",
            "top_p",
            "top_k",
            "threshold",
            "minimal_topk",
            "eos_early_stop",
            "editing_threshold",
            "max_post_steps",
            "num_to_transfer",
            "cache",
            "stop_at_eos",
            "cuda_graphs",
            "truncate",
        ),  # fmt: skip
        diffuguard=True,
        block_diffusion=True,
    ),
    "llada_moe": ModelFamily(
        name="llada_moe",
        label="LLaDA-MoE",
        config_class=LLaDAMoEConfig,
        model_class=LLaDAMoEModel,
        sampler="mosa.sampling.llada:generate",
        length_keyword="gen_length",
        trace_keyword="return_trace",
        sampler_options=_LLADA_OPTIONS,
        diffuguard=True,
    ),
}

LOGITS_FAMILY = "llada"
"""The family whose sampler runs a model outside the table that returns ``.logits`` (LLaDA's
``generate`` serves any such model)."""


def _known() -> str:
    return ", ".join(f"{f.model_type!r} ({f.architecture})" for f in FAMILIES.values())


def family_of_config(config: dict[str, Any], source: str = "config") -> ModelFamily:
    """The family a parsed ``config.json`` is of: the one entry whose ``describes`` holds
    (``model_type``, else ``architectures``; LLaDA-MoE's ``"llada"`` told from dense LLaDA's
    by its keys).

    Raises ValueError naming the known families when it is none of them, and naming the
    candidates when several entries claim it.
    """
    found = [family for family in FAMILIES.values() if family.describes(config)]
    if len(found) == 1:
        return found[0]
    model_type = config.get("model_type")
    architectures = config.get("architectures")
    if not isinstance(architectures, list):
        architectures = []
    if found:
        raise ValueError(
            f"{source}: model type {model_type!r} (architectures {architectures}) is claimed by "
            f"the families {', '.join(f.name for f in found)}; their config classes' describes() "
            "must tell them apart"
        )
    raise ValueError(
        f"{source}: unknown model type {model_type!r} (architectures {architectures}); "
        f"mosa.models loads model_type {_known()}"
    )


def is_block_diffusion(model) -> bool:
    """Whether ``model`` (a mosa model) is of a block-diffusion family; False for a model of
    no registered family (the samplers' own checks name what is wrong with it)."""
    try:
        return family_of(model).block_diffusion
    except ValueError:
        return False


def family_of(model) -> ModelFamily:
    """The family of a mosa model (a ``DiffusionLM``) or of its config object.

    Raises ValueError naming the known families for a class no entry names, so that a model
    of a family that is not registered is never decoded as another family.
    """
    cls = type(model)
    for family in FAMILIES.values():
        if cls is family.config_class:
            return family
    for base in cls.__mro__:  # a subclass of a family's model belongs to that family
        for family in FAMILIES.values():
            if base is family.model_class:
                return family
    raise ValueError(
        f"{cls.__name__} is no registered model family; mosa.models.FAMILIES holds "
        f"{', '.join(f.model_class.__name__ for f in FAMILIES.values())}"
    )

"""``from_hf``: a mosa model over the very tensors of a model loaded with transformers.

A user who loaded a model of a registered family (LLaDA, Dream, LLaDA2.x, LLaDA-MoE) with ``AutoModel.from_pretrained(..., trust_remote_code=True)``
(optionally wrapped by peft) already holds the weights in the published layout, under the
names ``mosa.models`` uses. Instead of loading a second copy, the mosa module tree is built on
the meta device and each of its projections and embeddings is replaced by the user's own
module at the same name (peft's LoRA layers included, so adapters stay live and unmerged); the
norms, routers and buffers take the user's tensors. Nothing is copied or moved, and no device is synchronised.
"""

from __future__ import annotations

import sys
import weakref

import torch
from torch import nn

from .base import DiffusionLM
from .families import FAMILIES, LOGITS_FAMILY, ModelFamily, family_of, family_of_config, resolve

# Modules whose own forward the mosa model calls (so a LoRA wrapper around them still applies).
_CALLED = (nn.Linear, nn.Embedding)


def _peft_model_class():
    # peft is only imported when the caller imported it: a PeftModel cannot exist otherwise,
    # and importing peft costs seconds.
    peft = sys.modules.get("peft")
    return None if peft is None else peft.PeftModel


def _unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a ``PeftModel`` (its LoRA layers injected in place)."""
    peft_model = _peft_model_class()
    if peft_model is None or not isinstance(model, peft_model):
        return model
    if model.active_peft_config.is_prompt_learning:
        raise ValueError(
            f"from_hf: the peft adapter is {model.active_peft_config.peft_type} (prompt learning), "
            "which works through the wrapper's forward; mosa adopts layer adapters such as LoRA"
        )
    return model.get_base_model()


def _config_dict(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise ValueError(
            f"from_hf: {type(model).__name__} has no transformers config (model.config.to_dict()); "
            "pass a model of a family in mosa.models.FAMILIES loaded with transformers, or use "
            "mosa.load_model(path)"
        )
    return config.to_dict()


def _base_layer(module: nn.Module) -> nn.Module:
    """The layer a peft tuner layer wraps (``base_layer``), else the module itself."""
    return getattr(module, "base_layer", module)


def _same_shape(ours: nn.Module, theirs: nn.Module) -> bool:
    mine = dict(ours.named_parameters())
    found = dict(theirs.named_parameters())
    return mine.keys() == found.keys() and all(
        mine[name].shape == found[name].shape for name in mine
    )


def _adopt_module(skeleton: DiffusionLM, name: str, ours: nn.Module, theirs: nn.Module) -> bool:
    """Puts ``theirs`` (peft's wrapper included) in place of the projection or embedding
    ``ours`` when it is one of the same kind; False when it is not (a router that keeps its
    weight as a bare parameter), whose tensors are then taken by name."""
    if not isinstance(_base_layer(theirs), type(ours)):
        return False
    if not _same_shape(ours, _base_layer(theirs)):
        found = {n: tuple(p.shape) for n, p in _base_layer(theirs).named_parameters()}
        expected = {n: tuple(p.shape) for n, p in ours.named_parameters()}
        raise ValueError(f"from_hf: {name} holds {found}, the config implies {expected}")
    parent, _, child = name.rpartition(".")
    setattr(skeleton.get_submodule(parent), child, theirs)
    return True


def _adopt_tensors(skeleton: DiffusionLM, source: nn.Module) -> None:
    """Every parameter and persistent buffer of the skeleton that is not yet the source's
    (norms, an MoE router's weight and expert bias) becomes the source's tensor of the same
    name, shape checked."""
    for prefix, module in list(skeleton.named_modules()):
        tensors = [(n, t, module._parameters) for n, t in module._parameters.items()]
        tensors += [(n, t, module._buffers) for n, t in module._buffers.items()]
        for local, ours, registry in tensors:
            if ours is None:
                continue
            name = f"{prefix}.{local}" if prefix else local
            try:
                theirs = (
                    source.get_parameter(name)
                    if registry is module._parameters
                    else source.get_buffer(name)
                )
            except AttributeError:
                kind = "parameter" if registry is module._parameters else "buffer"
                raise ValueError(f"from_hf: the model has no {kind} {name!r}") from None
            if theirs is ours:
                continue
            if theirs.shape != ours.shape:
                raise ValueError(
                    f"from_hf: {name} has shape {tuple(theirs.shape)}, the config implies "
                    f"{tuple(ours.shape)}"
                )
            registry[local] = theirs


def adopt_by_name(skeleton: DiffusionLM, source: nn.Module) -> None:
    """Puts ``source``'s modules and parameters in place of the skeleton's meta ones at the
    same names (the adopter of the published layouts): its projections and embedding as
    modules (so peft's LoRA layers on them stay live), every other tensor (norms, an MoE
    router's weight and expert-bias buffer) by name."""
    head_and_embedding = {
        name
        for name, module in skeleton.named_modules()
        if module is skeleton.get_input_embeddings()
        or (isinstance(module, nn.Linear) and module.weight is skeleton.lm_head_weight)
    }
    for name, ours in list(skeleton.named_modules()):
        if not isinstance(ours, _CALLED):
            continue
        try:
            theirs = source.get_submodule(name)
        except AttributeError:
            raise ValueError(f"from_hf: the model has no module {name!r}") from None
        if name in head_and_embedding and theirs is not _base_layer(theirs):
            raise ValueError(
                f"from_hf: {name} carries an adapter ({type(theirs).__name__}); the fused ops read "
                "the embedding and the output head as plain weights — adapt the block projections "
                "only, or merge the adapter (merge_and_unload) first"
            )
        _adopt_module(skeleton, name, ours, theirs)
    _adopt_tensors(skeleton, source)


def from_hf(model: nn.Module) -> DiffusionLM:
    """A mosa model whose parameters are the same tensors as ``model``'s (no copy).

    ``model``: LLaDA (``LLaDAModelLM``), Dream (``DreamModel``), LLaDA2.x
    (``LLaDA2MoeModelLM``) or LLaDA-MoE (``LLaDAMoEModelLM``) as loaded with transformers'
    remote code, or such a model wrapped by peft. The family comes from the config's
    ``model_type`` (else ``architectures``); every module must sit at the published name with
    the shape the config implies, and the two models must hold the same parameters. The
    projections are the user's own modules, so peft LoRA layers on them stay active and
    unmerged (adapters can still be switched or disabled); the embedding and output head must
    be plain. Norms, MoE routers' weights and expert-bias buffers are the model's own tensors.
    An MoE layer packs its routed experts' weights into one tensor at its first forward and
    points the experts' (shared) parameters at their slices (``mosa.models.moe``), so from then
    on their ``data_ptr`` is the pack's. The result runs the fused path of ``mosa.generate``; it shares ``model``'s
    device, dtype and training mode.

    Raises ValueError naming what was found when ``model`` is not such a model.
    """
    if isinstance(model, DiffusionLM):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"from_hf needs a torch.nn.Module, got {type(model).__name__}")
    source = _unwrap_peft(model)
    data = _config_dict(source)
    family = family_of_config(data, f"from_hf: {type(source).__name__}.config")
    with torch.device("meta"):
        skeleton = family.model_class(family.read_config(data))
    skeleton.train(source.training)
    resolve(family.adopter)(skeleton, source)
    ours = dict(skeleton.named_parameters())
    theirs = dict(source.named_parameters())
    buffers = dict(skeleton.named_buffers())
    if (
        ours.keys() != theirs.keys()
        or any(ours[n] is not theirs[n] for n in ours)
        or any(buffers[n] is not source.get_buffer(n) for n in buffers)
    ):
        extra = sorted(theirs.keys() - ours.keys())[:3]
        raise ValueError(
            f"from_hf: {type(source).__name__} holds parameters the {family.label} layout does "
            f"not use ({', '.join(extra) or 'shared differently'}); mosa adopts the published "
            "layouts only"
        )
    skeleton.name_or_path = getattr(source, "name_or_path", None)
    return skeleton


def _published_family(model) -> ModelFamily | None:
    """The mosa family a model's transformers config names, None when it names none."""
    config = getattr(model, "config", None)
    if not hasattr(config, "to_dict"):
        return None
    try:
        return family_of_config(config.to_dict())
    except ValueError:
        return None


def _layout(model: nn.Module) -> tuple[int, ...]:
    """Identity of every module and parameter: changes when adapters are injected or removed."""
    return (*map(id, model.modules()), *map(id, model.parameters()))


# A sampler call adopts the user's model anew unless its modules are the ones adopted last time
# (building the mosa tree costs some milliseconds at 8B, per generate call).
_ADOPTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def adopt_model(model):
    """What the samplers run: ``model`` itself when it is a mosa model, its base when it is a
    mosa model wrapped by peft, ``from_hf(model)`` for a transformers model of a registered family
    (peft-wrapped or not; kept for the next call while its modules stay the same), and any
    other model unchanged (the ``.logits`` path)."""
    if isinstance(model, DiffusionLM):
        return model
    inner = _unwrap_peft(model) if isinstance(model, nn.Module) else model
    if isinstance(inner, DiffusionLM):
        return inner
    if _published_family(inner) is None:
        return model
    layout = _layout(model)
    cached = _ADOPTED.get(model)
    if cached is None or cached[0] != layout:
        cached = _ADOPTED[model] = (layout, from_hf(model))
    return cached[1]


def sampling_family(model) -> ModelFamily:
    """The family whose sampler decodes ``model``: a mosa model's own (also for one
    ``adopt_model`` adopts), LLaDA's for a model outside the table that returns ``.logits``.

    Raises ValueError naming the known families for a mosa model of no registered family.
    """
    adopted = adopt_model(model)
    if isinstance(adopted, DiffusionLM):
        return family_of(adopted)
    return FAMILIES[LOGITS_FAMILY]

"""``mosa.from_hf``: a model loaded with transformers, adopted without copying its tensors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hf_standins import standin
from tiny_checkpoints import TINY_CONFIGS
from torch import nn

import mosa
from mosa.models import FAMILIES, DiffusionLM, LLaDAModel, from_hf

peft = pytest.importorskip("peft")


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 120, (2, 9), generator=torch.Generator().manual_seed(seed))


def _published_logits(model: nn.Module, family: str, ids, mask=None) -> torch.Tensor:
    """The stand-in's ``.logits`` in mosa's convention (Dream's shifted, as its sampler does)."""
    logits = model(ids, attention_mask=mask).logits
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1) if family == "dream" else logits


@torch.no_grad()
def test_from_hf_shares_every_tensor_and_matches_the_published_logits(family):
    hf = standin(family, TINY_CONFIGS[family])
    before = {name: t.data_ptr() for name, t in hf.named_parameters()}
    buffers = {name: t.data_ptr() for name, t in hf.named_buffers()}
    adopted = from_hf(hf)
    assert type(adopted) is FAMILIES[family].model_class
    ours = dict(adopted.named_parameters())
    assert ours.keys() == before.keys()
    assert all(ours[name].data_ptr() == ptr for name, ptr in before.items())
    # the MoE routers' expert-bias buffers too
    assert {n: t.data_ptr() for n, t in adopted.named_buffers()} == buffers
    assert (
        adopted.lm_head_weight.data_ptr()
        == before["model.transformer.ff_out.weight" if family == "llada" else "lm_head.weight"]
    )
    ids = _ids()
    mask = torch.ones_like(ids).index_fill_(1, torch.tensor([0, 1]), 0)
    mask[1] = 1
    for attention_mask in (None, mask):
        torch.testing.assert_close(
            adopted(ids, attention_mask, return_logits=True).logits,
            _published_logits(hf, family, ids, attention_mask),
        )
    if FAMILIES[family].block_diffusion:
        torch.testing.assert_close(
            adopted(ids, mask, return_logits=True, block_length=4).logits,
            hf(ids, attention_mask=mask, block_length=4).logits,
        )


@torch.no_grad()
def test_a_peft_wrapped_model_runs_its_adapter_unmerged(family):
    hf = standin(family, TINY_CONFIGS[family])
    base = {name: p.clone() for name, p in hf.named_parameters()}
    tuned = peft.get_peft_model(
        hf,
        peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=FAMILIES[family].model_class.lora_target_modules
        ),
    )
    generator = torch.Generator().manual_seed(1)
    for name, param in tuned.named_parameters():
        if "lora_B" in name:
            param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    adopted = from_hf(tuned)
    ids = _ids()
    with_adapter = adopted(ids, return_logits=True).logits
    torch.testing.assert_close(with_adapter, _published_logits(tuned, family, ids))
    with tuned.disable_adapter():
        without = adopted(ids, return_logits=True).logits
        torch.testing.assert_close(without, _published_logits(tuned, family, ids))
    assert not torch.allclose(with_adapter, without, atol=1e-3)
    for name, param in hf.named_parameters():  # the user's weights: untouched, not merged
        if "lora_" not in name:
            original = name.replace(".base_layer", "")
            assert torch.equal(param, base[original])


def test_a_peft_wrapped_mosa_model_is_its_base():
    mosa_model = from_hf(standin("llada", TINY_CONFIGS["llada"]))
    tuned = peft.get_peft_model(
        mosa_model, peft.LoraConfig(r=2, target_modules=mosa_model.lora_target_modules)
    )
    assert mosa.models.adopt_model(tuned) is mosa_model


@pytest.mark.parametrize(
    ("family", "target", "head"),
    [
        ("dream", ["lm_head"], "lm_head"),
        ("llada", ["ff_out"], "model.transformer.ff_out"),
        ("llada2", ["word_embeddings"], "model.word_embeddings"),
    ],
)
def test_an_adapter_on_the_output_head_is_refused(family, target, head):
    # LLaDA's head shares its name ff_out with the blocks' down projections.
    tuned = peft.get_peft_model(
        standin(family, TINY_CONFIGS[family]), peft.LoraConfig(r=2, target_modules=target)
    )
    with pytest.raises(ValueError, match=f"{head} carries an adapter"):
        from_hf(tuned)


class _Config(SimpleNamespace):
    def to_dict(self):
        return dict(vars(self))


class _Other(nn.Module):
    def __init__(self, **config):
        super().__init__()
        self.config = _Config(**config)
        self.proj = nn.Linear(4, 4)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (nn.Linear(2, 2), "Linear has no transformers config"),
        (_Other(model_type="gpt2", architectures=["GPT2LMHeadModel"]), "unknown model type 'gpt2'"),
        ("not a model", "needs a torch.nn.Module, got str"),
    ],
)
def test_unknown_models_are_refused_saying_what_was_found(model, message):
    with pytest.raises((TypeError, ValueError), match=message):
        from_hf(model)


def test_a_published_config_over_other_modules_is_refused():
    hf = standin("llada", TINY_CONFIGS["llada"])
    hf.model.transformer["blocks"][1].q_proj = nn.Linear(64, 32, bias=False)
    with pytest.raises(ValueError, match=r"blocks\.1\.q_proj holds \{'weight': \(32, 64\)\}"):
        from_hf(hf)
    renamed = standin("dream", TINY_CONFIGS["dream"])
    renamed.model.layers[0].mlp.fc = renamed.model.layers[0].mlp.up_proj
    del renamed.model.layers[0].mlp.up_proj
    with pytest.raises(ValueError, match="no module 'model.layers.0.mlp.up_proj'"):
        from_hf(renamed)


def test_unrelated_models_keep_the_logits_path():
    other = _Other(model_type="gpt2")
    assert mosa.models.adopt_model(other) is other


def _refuse_forward(model: nn.Module) -> None:
    def forward(*args, **kwargs):
        raise AssertionError("the sampler fell back to the model's .logits forward")

    model.forward = forward


class _LogitsView(nn.Module):
    """The stand-in as a generic ``.logits`` model (no config): the samplers' slow path."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None):
        return self.inner(input_ids, attention_mask=attention_mask)


@pytest.mark.parametrize("family", ["llada", "llada_moe"])
def test_generate_takes_the_fused_path_for_a_transformers_model(family):
    hf = standin(family, TINY_CONFIGS[family])
    prompt = _ids(3)
    settings = {"steps": 8, "gen_length": 8, "block_length": 4, "mask_id": 126}
    slow = mosa.generate(_LogitsView(hf), prompt, **settings)
    _refuse_forward(hf)
    torch.testing.assert_close(mosa.generate(hf, prompt, cache="dual", **settings)[:, :9], prompt)
    torch.testing.assert_close(mosa.generate(hf, prompt, **settings), slow)


def test_diffusion_generate_takes_the_fused_path_for_a_transformers_model():
    hf = standin("dream", TINY_CONFIGS["dream"])
    prompt = _ids(4)
    settings = {"max_new_tokens": 6, "steps": 6, "alg": "maskgit_plus", "mask_token_id": 126}
    slow = mosa.diffusion_generate(_LogitsView(hf), prompt, **settings)
    _refuse_forward(hf)
    torch.testing.assert_close(mosa.diffusion_generate(hf, prompt, **settings), slow)


def test_adopted_model_is_a_diffusion_lm_in_the_users_mode():
    hf = standin("dream", TINY_CONFIGS["dream"]).train()
    adopted = from_hf(hf)
    assert isinstance(adopted, DiffusionLM) and adopted.training
    assert adopted.model.layers[0].self_attn.q_proj is hf.model.layers[0].self_attn.q_proj


def test_the_samplers_reuse_an_adoption_until_the_model_changes():
    hf = standin("llada", TINY_CONFIGS["llada"])
    first = mosa.models.adopt_model(hf)
    assert mosa.models.adopt_model(hf) is first
    # peft injects its layers into hf in place: the next call must adopt them.
    peft.get_peft_model(hf, peft.LoraConfig(r=2, target_modules=LLaDAModel.lora_target_modules))
    second = mosa.models.adopt_model(hf)
    assert second is not first
    assert second.blocks[0].q_proj is hf.model.transformer["blocks"][0].q_proj
    assert hasattr(second.blocks[0].q_proj, "base_layer")

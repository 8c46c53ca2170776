"""A model output's auxiliary loss (``DiffusionLMOutput.aux_loss``, an MoE router's load
balancing) reaches the trainer's loss and gradient."""

from __future__ import annotations

import torch

from mosa.align.trainer import _Models
from mosa.models import DiffusionLMOutput


class _AuxModel(torch.nn.Module):
    """A policy whose output carries ``weight ** 2`` as its auxiliary loss."""

    def __init__(self, aux: bool):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64))
        self.aux = aux

    def forward(self, input_ids, attention_mask, block_length=None):
        hidden = torch.randn(*input_ids.shape, 4, dtype=torch.float64)
        return DiffusionLMOutput(hidden, aux_loss=self.weight**2 if self.aux else None)


def _models(trained: torch.nn.Module) -> _Models:
    models = _Models.__new__(_Models)  # the forward bookkeeping only: no checkpoint to load
    models.trained, models._aux_losses = trained, []
    return models


def test_the_policy_forwards_aux_losses_are_added_to_the_loss_and_its_gradient():
    trained = _AuxModel(aux=True)
    models = _models(trained)
    ids = torch.randint(0, 8, (3, 5))
    for _ in range(2):  # the objective's forward and the benign regulariser's
        assert models.policy(ids, None).shape == (3, 5, 4)
    aux = models.take_aux_loss(rows=3)
    assert torch.allclose(aux, torch.tensor(3 * 2 * 1.5**2, dtype=torch.float64))
    aux.backward()
    assert torch.allclose(trained.weight.grad, torch.tensor(3 * 2 * 2 * 1.5, dtype=torch.float64))
    assert models.take_aux_loss(rows=3) == 0.0  # taken once


def test_a_model_without_aux_loss_adds_nothing():
    models = _models(_AuxModel(aux=False))
    models.policy(torch.randint(0, 8, (2, 3)), None)
    assert models.take_aux_loss(rows=2) == 0.0

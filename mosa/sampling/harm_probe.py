"""A linear probe on a diffusion LM's last hidden states: DiffuGuard's block audit.

The feature of a canvas is the mean last-layer hidden state over its real prompt tokens and
the block just committed; the probe projects it on a "harm direction" (the harmful minus the
benign class mean, whitened by a shrunk within-class covariance: ``Probe.fit``) and flags it
when the projection passes the midpoint of the two classes' mean projections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_SHRINKAGE = 0.05


@dataclass(frozen=True, eq=False)
class Probe:
    """``direction``: float32 ``[d]`` (``fit``: harmful minus benign mean, whitened);
    ``threshold``: a feature is flagged when its projection on ``direction`` exceeds it."""

    direction: torch.Tensor
    threshold: float

    def __post_init__(self):
        if not isinstance(self.direction, torch.Tensor) or self.direction.dim() != 1:
            raise ValueError(
                f"Probe.direction must be a 1-D tensor [hidden size], got "
                f"{getattr(self.direction, 'shape', type(self.direction).__name__)}"
            )
        if not self.direction.is_floating_point() or not torch.isfinite(self.direction).all():
            raise ValueError("Probe.direction must hold finite floating-point values")
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ValueError(f"Probe.threshold must be a number, got {threshold!r}")
        if threshold != threshold or abs(threshold) == float("inf"):
            raise ValueError(f"Probe.threshold must be finite, got {threshold!r}")

    @property
    def width(self) -> int:
        return self.direction.numel()

    @classmethod
    def fit(
        cls, harmful: torch.Tensor, benign: torch.Tensor, shrinkage: float = DEFAULT_SHRINKAGE
    ) -> Probe:
        """The probe separating two sets of features ``[N, d]``: linear discriminant analysis
        with a shrunk covariance, ``direction = S^-1 (mean_harmful - mean_benign)`` with
        ``S = (1 - shrinkage) C + shrinkage (tr(C) / d) I`` (``C``: the classes' pooled
        covariance), threshold at the midpoint of the class means' projections.

        ``shrinkage = 1`` is the plain difference of means; less lets the probe discount
        directions the features vary along within each class: on the tiny model the plain
        difference flags a third of held-out benign prompts, 0.05 none (``diffuguard``'s
        docstring has the figures). Kept above 0 so that ``S`` is invertible with fewer
        samples than the hidden size.
        """
        if isinstance(shrinkage, bool) or not isinstance(shrinkage, int | float):
            raise ValueError(f"shrinkage must be a number in (0, 1], got {shrinkage!r}")
        if not 0 < shrinkage <= 1:
            raise ValueError(
                f"shrinkage must be in (0, 1] (1: difference of means), got {shrinkage}"
            )
        for name, features in (("harmful", harmful), ("benign", benign)):
            if not isinstance(features, torch.Tensor) or features.dim() != 2 or not len(features):
                raise ValueError(f"{name} features must be a non-empty [N, d] tensor")
        if harmful.shape[1] != benign.shape[1]:
            raise ValueError(
                f"harmful and benign features differ in width ({harmful.shape[1]} vs "
                f"{benign.shape[1]}); compute both with the same model"
            )
        # float64 on the CPU: the solve is d x d, once per calibration.
        harmful, benign = harmful.detach().cpu().double(), benign.detach().cpu().double()
        harmful_mean, benign_mean = harmful.mean(dim=0), benign.mean(dim=0)
        gap = harmful_mean - benign_mean
        if not gap.abs().sum() > 0:
            raise ValueError("harmful and benign features have the same mean; nothing to probe")
        centred = torch.cat([harmful - harmful_mean, benign - benign_mean])
        covariance = centred.T @ centred / len(centred)
        scale = covariance.diagonal().mean().clamp(min=torch.finfo(torch.float64).tiny)
        shrunk = (1 - shrinkage) * covariance
        shrunk.diagonal().add_(shrinkage * scale)
        direction = torch.linalg.solve(shrunk, gap)
        threshold = 0.5 * float((harmful_mean + benign_mean) @ direction)
        return cls(direction=direction.float(), threshold=threshold)

    def check_model(self, model) -> None:
        """Raises ValueError when the probe was not made for ``model``'s hidden size."""
        hidden = model.lm_head_weight.shape[1]
        if self.width != hidden:
            raise ValueError(
                f"the audit probe has width {self.width} but the model's hidden size is {hidden}; "
                "calibrate the probe on this model (DiffuGuard.calibrate)"
            )

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """float32 ``[B]``: each feature's projection minus the threshold (> 0: flagged)."""
        direction = self.direction.to(device=features.device, dtype=torch.float32)
        return features.float() @ direction - self.threshold


def pooled_features(
    model,
    x: torch.Tensor,
    key_valid: torch.Tensor | None,
    prompt_length: int | torch.Tensor,
    block: slice,
    block_length: int | None = None,
) -> torch.Tensor:
    """float32 ``[B, d]``: the mean last hidden state of canvas ``x`` ``[B, L]`` over its real
    prompt tokens (columns before ``prompt_length``, an int or ``int64[B]`` per row;
    ``key_valid`` False at padding, None: nothing padded) and the response positions of
    ``block``. One forward of the whole canvas, later blocks still masked, as the next
    denoising step would see it; block-causal with ``block_length`` (block diffusion, whose
    aligned canvas starts each row's prompt at its own slot and ends it at ``prompt_length``).

    Not the whole response so far: its share of the mean would grow block by block, and with
    it the score's drift (mostly end-of-text padding late in an answer), which one threshold
    for every block cannot follow."""
    hidden = model(x, key_valid, block_length=block_length).hidden_states.float()
    position = torch.arange(x.shape[1], device=x.device)[None]
    in_block = (position >= block.start) & (position < block.stop)
    prompt_end = torch.as_tensor(prompt_length, device=x.device).reshape(-1, 1)
    weight = ((position < prompt_end) | in_block).expand(x.shape[0], -1)
    if key_valid is not None:
        weight = weight & key_valid.bool()
    weight = weight.float()
    return (hidden * weight[..., None]).sum(dim=1) / weight.sum(dim=1, keepdim=True)

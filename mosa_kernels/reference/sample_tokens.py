"""Token choice and confidence, the spec: full float64 softmax over the vocabulary."""

from __future__ import annotations

import torch

from ..random import RANDOM_CONFIDENCE_COLUMN, gumbel, uniform


def sample_tokens(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    x_uncond: torch.Tensor | None = None,
    cfg_scale: float = 0.0,
    temperature: float = 0.0,
    confidence: str = "prob",
    tempered_confidence: bool = False,
    suppress=(),
    exclude_from_confidence=(),
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``mosa_kernels.sample_tokens`` for 2-D ``x``; returns float64 confidence."""

    def head(h):
        if weight is None:
            return h.double()
        return h.double() @ weight.double().T + (0.0 if bias is None else bias.double())

    logits = head(x)
    if x_uncond is not None:
        uncond = head(x_uncond)
        logits = uncond + (cfg_scale + 1.0) * (logits - uncond)
    logits = logits.clone()
    logits[:, list(suppress)] = float("-inf")
    rows = torch.arange(logits.shape[0], device=logits.device)
    if temperature > 0:
        cols = torch.arange(logits.shape[1], device=logits.device)
        score = logits / temperature + gumbel(seed, rows[:, None], cols[None])
    else:
        score = logits
    token = score.argmax(dim=1)

    conf_logits = (
        logits / temperature if (tempered_confidence and temperature > 0) else logits.clone()
    )
    conf_logits[:, list(exclude_from_confidence)] = float("-inf")
    probs = torch.softmax(conf_logits, dim=1)
    if confidence == "prob":
        conf = probs.gather(1, token[:, None])[:, 0]
    elif confidence == "margin":
        top = probs.topk(2, dim=1).values
        conf = top[:, 0] - top[:, 1]
    elif confidence == "neg_entropy":
        conf = torch.xlogy(probs, probs).sum(dim=1)
    elif confidence == "random":
        conf = uniform(seed, rows, torch.tensor(RANDOM_CONFIDENCE_COLUMN))
    else:
        raise ValueError(f"unknown confidence {confidence!r}")
    return token, conf

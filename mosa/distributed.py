"""One process or N under ``torchrun``: the rank, the world size and this process's device."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mosa.models.loading import resolve_device


@dataclass(frozen=True)
class Runtime:
    rank: int
    world: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def join(requested: str | None = None) -> Runtime:
    """Joins the torchrun process group when ``WORLD_SIZE`` > 1 (nccl with one GPU per process
    on CUDA, gloo otherwise). ``requested`` is a device; None means CUDA when there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available() and (requested or "cuda").startswith("cuda")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = resolve_device(requested or "cpu")
    if world > 1 and not dist.is_initialized():
        # Imported after the group exists (as a meta tensor's first random op does, when a model
        # is built on the meta device), torch._dynamo keeps the group alive past
        # destroy_process_group; gloo's threads then outlive the interpreter and abort the
        # process at exit when they free a tensor. Imported before, it holds nothing.
        importlib.import_module("torch._dynamo")

        dist.init_process_group("nccl" if cuda else "gloo")
    return Runtime(rank, world, device)

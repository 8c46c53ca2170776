"""The CPU twin's host-read guard (``sampling_builders.no_host_reads``) fails on each kind of
operation that synchronises with the host on CUDA, and lets a step made of device-side ops run."""

from __future__ import annotations

import pytest
import torch
from sampling_builders import no_host_reads


def _values():
    x = torch.randn(6, generator=torch.Generator().manual_seed(0))
    return x, x > 0.1


SYNCING = {
    "item": lambda x, mask: x[0].item(),
    "bool": lambda x, mask: bool(x[0] > 0),
    "nonzero": lambda x, mask: mask.nonzero(),
    "unique": lambda x, mask: mask.unique(),
    "masked_fill with a tensor value": lambda x, mask: x.masked_fill(mask, x[0]),
    "bool-mask index": lambda x, mask: x[mask],
    "bool-mask index_put_": lambda x, mask: x.clone().index_put_((mask,), torch.ones(())),
    "bool-mask assignment": lambda x, mask: x.clone().__setitem__(mask, x[:1]),
    "tolist": lambda x, mask: x.tolist(),
    "cpu": lambda x, mask: x.cpu(),
    "to cpu": lambda x, mask: x.to("cpu"),
    "to cpu by keyword": lambda x, mask: x.to(device="cpu", dtype=torch.float64),
    "numpy": lambda x, mask: x.numpy(),
    "repeat_interleave without output_size": lambda x, mask: x.repeat_interleave(mask.long()),
    "tensor from Python data": lambda x, mask: x + torch.tensor([1.0]),
    "as_tensor from Python data": lambda x, mask: x + torch.as_tensor([1.0]),
    "copy to another device": lambda x, mask: torch.empty(6, device="meta").copy_(x),
    "_to_copy to another device": lambda x, mask: torch.ops.aten._to_copy(x, device="meta"),
}


@pytest.mark.parametrize("op", list(SYNCING))
def test_the_guard_fails_on_a_host_synchronising_op(op):
    x, mask = _values()
    SYNCING[op](x, mask)  # runs outside the guard
    with pytest.raises(AssertionError, match="inside a graph step"), no_host_reads():
        SYNCING[op](x, mask)


def _device_side_step(x, mask):
    """What a step does instead: where, gather/scatter, integer indices, a sized
    repeat_interleave, dtype casts, in-place copies on one device, a scalar masked_fill,
    0-d and empty tensors from Python data."""
    index = torch.argsort(x)
    out = torch.where(mask, x, torch.zeros_like(x)).gather(0, index)
    out[index[:2]] = x[:2]
    out.copy_(out.to(torch.float64).masked_fill(~mask, -1.0).to(x.dtype))
    out[index[:1]] = 0.5  # a Python scalar becomes a 0-d tensor: no copy on CUDA
    out = out + torch.tensor(1.0) + torch.as_tensor([], dtype=x.dtype).sum()
    return out.repeat_interleave(torch.full((6,), 2), output_size=12)


def test_the_guard_lets_device_side_ops_run():
    x, mask = _values()
    expected = _device_side_step(x, mask)
    with no_host_reads():
        got = _device_side_step(x, mask)
    assert torch.equal(got, expected)

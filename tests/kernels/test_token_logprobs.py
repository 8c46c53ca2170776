"""``token_logprobs``, ``token_kl`` and ``logprobs_from_logits`` against the float64
reference: values and gradients, on every backend (docs/DESIGN.md §4.3)."""

from __future__ import annotations

import pytest
import torch
from inputs import (
    BF16_TOL,
    FP32_TOL,
    GRAD_TOL,
    as64,
    assert_close,
    lm_head,
    needs_cuda,
    randint,
    randn,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mosa_kernels import logprobs_from_logits, token_kl, token_logprobs
from mosa_kernels.reference import token_logprobs as reference

pytestmark = pytest.mark.usefixtures("poison_outputs")

N, V, D = 37, 1003, 72
IGNORE = -100


def leaf(t: torch.Tensor | None, grad: bool) -> torch.Tensor | None:
    return None if t is None else t.detach().clone().requires_grad_(grad)


def leaf64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else as64(t).requires_grad_(t.requires_grad)


def run(fn, tensors: dict, upstream_seed: int, **kw):
    """``fn(**tensors, **kw)``, then backward of ``sum(out * g)`` for a random ``g``.

    Returns the output and the gradients of the tensors that require one (None for the
    others, which must not receive one).
    """
    out = fn(**tensors, **kw)
    g = randn(out.shape, seed=upstream_seed, dtype=torch.float64)
    if any(t is not None and t.requires_grad for t in tensors.values()):
        (out * g.to(device=out.device, dtype=out.dtype)).sum().backward()
    grads = {name: None if t is None else t.grad for name, t in tensors.items()}
    return out, grads


def compare(fn, ref_fn, tensors: dict, *, tol=FP32_TOL, grad_tol=GRAD_TOL, no_grad=(), **kw):
    """Run the op and the reference on the same inputs; compare values and gradients.

    ``no_grad`` names inputs that require a gradient but must not get one (the reference
    side of the KL).
    """
    before = {k: t.detach().clone() for k, t in tensors.items() if t is not None}
    out, grads = run(fn, tensors, 99, **kw)
    for name, value in before.items():
        assert torch.equal(tensors[name].detach(), value), f"the op modified {name}"
    ref_kw = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    ref, ref_grads = run(ref_fn, {k: leaf64(t) for k, t in tensors.items()}, 99, **ref_kw)
    assert out.dtype == torch.float32 and out.device == next(iter(tensors.values())).device
    assert_close(out, ref, rel=tol, floor=1.0, what="value")
    for name, t in tensors.items():
        if t is None:
            continue
        if not t.requires_grad or name in no_grad:
            assert grads[name] is None, f"{name} must not get a gradient"
            continue
        assert grads[name] is not None, f"{name} got no gradient"
        assert grads[name].dtype == t.dtype and grads[name].shape == t.shape
        assert_close(grads[name], ref_grads[name], rel=grad_tol, floor=0.0, what=f"d{name}")
    return out, grads


def targets_for(n: int, k: int | None, vocab: int, device, seed=5, ignore=IGNORE):
    """``[n]`` (k None) or ``[n, k]`` ids; with k, repeated ids and ignore entries."""
    assert n >= 7 and (k is None or k >= 3)
    if k is None:
        t = randint((n,), 0, vocab, seed=seed)
        t[3] = ignore
        t[4] = vocab - 1
        return t.to(device)
    t = randint((n, k), 0, vocab, seed=seed)
    t[:, -1] = t[:, 0]  # a repeated target in every row
    t[1::3, 1] = ignore
    t[2] = ignore  # a row with nothing to score
    t[5, 1] = t[5, 0]  # three times the same id
    t[6, 0], t[6, 1] = 0, vocab - 1
    return t.to(device)


def head(device, *, n=N, vocab=V, d=D, bias=False, hidden_grad=True, weight_grad=True, **kw):
    hidden, weight = lm_head(n, vocab, d, seed=1, logit_scale=2.0, device=device, **kw)
    b = randn((vocab,), seed=3, scale=0.5, device=device, **kw) if bias else None
    return dict(
        hidden=leaf(hidden, hidden_grad), weight=leaf(weight, weight_grad), bias=leaf(b, True)
    )


# ---- token_logprobs ---------------------------------------------------------------------

LOGPROB_CASES = [
    dict(k=None, temperature=1.0, chunk_rows=None, bias=True),
    dict(k=4, temperature=0.7, chunk_rows=8, bias=False),
    dict(k=4, temperature=1.3, chunk_rows=None, bias=True, ignore_index=-1),
]


@pytest.mark.parametrize(
    "case", LOGPROB_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items())
)
def test_token_logprobs(backend, device, case):
    case = dict(case)
    ignore = case.pop("ignore_index", IGNORE)
    tensors = head(device, bias=case.pop("bias"))
    targets = targets_for(N, case.pop("k"), V, device, ignore=ignore)
    out, _ = compare(
        _chunked(token_logprobs, case["chunk_rows"]),
        reference.token_logprobs,
        tensors,
        targets=targets,
        ignore_index=ignore,
        temperature=case["temperature"],
    )
    assert out.shape == targets.shape
    assert (out[targets == ignore] == 0).all(), "ignored targets give exactly 0"
    assert (out[targets != ignore] < 0).all()


def _chunked(fn, chunk_rows):
    def call(**kw):
        return fn(**kw, chunk_rows=chunk_rows)

    return call


@pytest.mark.parametrize("frozen", ["weight", "hidden"])
def test_token_logprobs_frozen(backend, device, frozen):
    # LoRA leaves the head frozen: only hidden gets a gradient (and the other way round).
    tensors = head(device, hidden_grad=frozen != "hidden", weight_grad=frozen != "weight")
    targets = targets_for(N, 4, V, device)
    _, grads = compare(
        _chunked(token_logprobs, 8), reference.token_logprobs, tensors, targets=targets
    )
    assert grads[frozen] is None and tensors[frozen].grad is None
    if frozen == "weight":
        # Rows whose targets are all ignored get exactly no gradient.
        assert (grads["hidden"][2] == 0).all()


def test_token_logprobs_leading_dims(backend, device):
    tensors = head(device, n=15, bias=True)
    tensors["hidden"] = leaf(tensors["hidden"].reshape(3, 5, D), True)
    for k in (None, 3):
        flat = targets_for(15, k, V, device, seed=7)
        targets = flat.reshape(3, 5) if k is None else flat.reshape(3, 5, k)
        for t in tensors.values():
            t.grad = None
        out, _ = compare(
            _chunked(token_logprobs, 4), reference.token_logprobs, tensors, targets=targets
        )
        assert out.shape == targets.shape


def test_token_logprobs_long_rows(backend, device):
    # Longer than a kernel block (1024 columns in the interpreter, up to 4096 compiled).
    vocab = 2100 if device.type == "cpu" else 8300
    tensors = head(device, n=7, vocab=vocab, d=24, bias=True)
    targets = targets_for(7, 4, vocab, device)
    targets[0] = torch.tensor([1023, 1024, 2047, vocab - 1])
    compare(token_logprobs, reference.token_logprobs, tensors, targets=targets, temperature=0.8)


def test_token_logprobs_int32_targets(backend, device):
    tensors = head(device, n=9, hidden_grad=True, weight_grad=False)
    targets = targets_for(9, 3, V, device).to(torch.int32)
    compare(token_logprobs, reference.token_logprobs, tensors, targets=targets.long())
    out = token_logprobs(tensors["hidden"], tensors["weight"], targets)
    ref = token_logprobs(tensors["hidden"], tensors["weight"], targets.long())
    assert torch.equal(out, ref)


def test_strided_inputs(backend, device):
    # Transposed views (e.g. a head stored [d, V]) and a strided logits view.
    hidden, weight = lm_head(9, V, D, seed=1, logit_scale=2.0, device=device)
    tensors = dict(
        hidden=leaf(hidden.T.contiguous().T, True), weight=leaf(weight.T.contiguous().T, True)
    )
    assert not tensors["hidden"].is_contiguous() and not tensors["weight"].is_contiguous()
    compare(token_logprobs, reference.token_logprobs, tensors, targets=targets_for(9, 3, V, device))
    wide = leaf(randn((9, 2 * V), seed=4, scale=3.0, device=device), True)
    out = logprobs_from_logits(wide[:, ::2], targets_for(9, None, V, device))
    ref = reference.logprobs_from_logits(as64(wide)[:, ::2], targets_for(9, None, V, "cpu"))
    assert_close(out, ref, rel=FP32_TOL, what="strided logits")


# ---- token_kl ---------------------------------------------------------------------------


def kl_inputs(device, *, n=N, shared=True, bias=False):
    tensors = head(device, n=n, bias=bias)
    ref_hidden = tensors["hidden"] + 0.5 * randn(tensors["hidden"].shape, seed=21, device=device)
    tensors["ref_hidden"] = leaf(ref_hidden, True)  # must get no gradient
    if not shared:
        noise = randn(tensors["weight"].shape, seed=22, scale=0.1, device=device)
        tensors["ref_weight"] = leaf(tensors["weight"] + noise, True)
    return tensors


@pytest.mark.parametrize("shared", [True, False], ids=["shared_head", "ref_weight"])
def test_token_kl(backend, device, shared):
    tensors = kl_inputs(device, shared=shared)
    out, _ = compare(
        _chunked(token_kl, None if shared else 8),
        reference.token_kl,
        tensors,
        no_grad=("ref_hidden", "ref_weight"),
    )
    assert out.shape == (N,) and (out >= -1e-6).all()


@pytest.mark.parametrize("bias", [False, True])
def test_token_kl_frozen_head(backend, device, bias):
    # The LoRA case: the forward computes d kl / d hidden, the backward only scales it.
    tensors = kl_inputs(device, n=19, bias=bias)
    tensors["weight"].requires_grad_(False)
    if bias:
        tensors["bias"].requires_grad_(False)
    compare(_chunked(token_kl, 4), reference.token_kl, tensors, no_grad=("ref_hidden",))


def test_token_kl_leading_dims(backend, device):
    tensors = kl_inputs(device, n=15, bias=True)
    tensors["hidden"] = leaf(tensors["hidden"].reshape(3, 5, D), True)
    tensors["ref_hidden"] = leaf(tensors["ref_hidden"].reshape(3, 5, D), False)
    tensors["bias"].requires_grad_(False)
    out, _ = compare(_chunked(token_kl, 4), reference.token_kl, tensors)
    assert out.shape == (3, 5)


def test_token_kl_bias_gradient(backend, device):
    # The bias is shared by both sides; the reference differentiates both of them.
    tensors = kl_inputs(device, n=15, bias=True)
    tensors["hidden"].requires_grad_(False)
    tensors["weight"].requires_grad_(False)
    compare(_chunked(token_kl, 4), reference.token_kl, tensors, no_grad=("ref_hidden",))


def test_token_kl_of_identical_distributions_is_zero(backend, device):
    tensors = head(device, n=11, weight_grad=False)
    hidden = tensors["hidden"]
    out = token_kl(hidden, hidden.detach(), tensors["weight"])
    assert out.abs().max().item() <= 1e-6
    out.sum().backward()
    assert hidden.grad.abs().max().item() <= 1e-6


# ---- logprobs_from_logits ---------------------------------------------------------------


@pytest.mark.parametrize("k", [None, 4], ids=["K1", "K4"])
def test_logprobs_from_logits(backend, device, k):
    logits = leaf(randn((N, V), seed=4, scale=3.0, device=device), True)
    targets = targets_for(N, k, V, device)
    out, _ = compare(
        logprobs_from_logits,
        reference.logprobs_from_logits,
        {"logits": logits},
        targets=targets,
        temperature=0.7,
    )
    assert out.shape == targets.shape and (out[targets == IGNORE] == 0).all()


def test_logprobs_from_logits_leading_dims(backend, device):
    logits = leaf(randn((3, 5, V), seed=4, scale=3.0, device=device), True)
    targets = targets_for(15, 3, V, device).reshape(3, 5, 3)
    compare(
        logprobs_from_logits, reference.logprobs_from_logits, {"logits": logits}, targets=targets
    )


# ---- bf16 -------------------------------------------------------------------------------


def test_bf16(backend, device):
    tensors = head(device, n=21, bias=True, dtype=torch.bfloat16)
    targets = targets_for(21, 3, V, device)
    compare(
        _chunked(token_logprobs, 8),
        reference.token_logprobs,
        tensors,
        targets=targets,
        tol=BF16_TOL,
        grad_tol=BF16_TOL,
    )
    kl = kl_inputs(device, n=21)
    kl = {k: leaf(t.bfloat16(), t.requires_grad) for k, t in kl.items() if t is not None}
    compare(
        token_kl, reference.token_kl, kl, tol=BF16_TOL, grad_tol=BF16_TOL, no_grad=("ref_hidden",)
    )
    logits = leaf(randn((21, V), seed=4, scale=3.0, device=device, dtype=torch.bfloat16), True)
    compare(
        logprobs_from_logits,
        reference.logprobs_from_logits,
        {"logits": logits},
        targets=targets,
        tol=BF16_TOL,
        grad_tol=BF16_TOL,
    )


@needs_cuda
def test_bf16_cuda_realistic_size(backend, device):
    n, vocab, d = 512, 151_937, 256
    tensors = head(device, n=n, vocab=vocab, d=d, dtype=torch.bfloat16)
    targets = targets_for(n, 3, vocab, device)
    compare(
        token_logprobs,
        reference.token_logprobs,
        tensors,
        targets=targets,
        tol=BF16_TOL,
        grad_tol=BF16_TOL,
    )


# ---- memory -----------------------------------------------------------------------------


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in bytes) any op produces while active.

    Bytes, not elements: the Triton interpreter views buffers as uint8 storage.
    """

    def __init__(self):
        super().__init__()
        self.nbytes, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() * t.element_size() > self.nbytes:
                self.nbytes, self.op = t.numel() * t.element_size(), func
        return out


def largest_tensor(fn, tensors, **kw):
    with LargestTensor() as mode:
        out = fn(**tensors, **kw)
        out.backward(torch.ones_like(out))
    return mode


@pytest.mark.parametrize("op", ["token_logprobs", "token_kl"])
def test_no_rows_by_vocab_tensor(backend, device, op):
    # hidden [n, d] and weight [V, d] are far smaller than [n, V]; chunks are [5, V].
    n, vocab, d = 24, 2053, 8
    tensors = head(device, n=n, vocab=vocab, d=d, bias=True)
    if op == "token_logprobs":
        fn, ref_fn = token_logprobs, reference.token_logprobs
        kw = dict(targets=targets_for(n, 3, vocab, device))
    else:
        fn, ref_fn = token_kl, reference.token_kl
        tensors["ref_hidden"] = leaf(tensors["hidden"] * 0.9, False)
        kw = {}
    full_logits = n * vocab * 4  # bytes of float32 [n, V]
    # The recorder sees the full logits of the naive computation...
    naive = largest_tensor(ref_fn, {k: leaf(t, True) for k, t in tensors.items()}, **kw)
    assert naive.nbytes >= full_logits
    # ...and nothing half that large in the chunked op, forward and backward.
    chunked = largest_tensor(fn, tensors, chunk_rows=5, **kw)
    assert chunked.nbytes < full_logits / 2, f"{chunked.op} made {chunked.nbytes} bytes"
    assert tensors["weight"].grad is not None and tensors["hidden"].grad is not None


# ---- bad input --------------------------------------------------------------------------


def _ids(*ids):
    return torch.tensor(ids, dtype=torch.int64)


OPS = {
    "logprobs": (
        token_logprobs,
        lambda: dict(hidden=torch.randn(4, 8), weight=torch.randn(16, 8), targets=_ids(0, 1, 2, 3)),
    ),
    "kl": (
        token_kl,
        lambda: dict(
            hidden=torch.randn(4, 8), ref_hidden=torch.randn(4, 8), weight=torch.randn(16, 8)
        ),
    ),
    "from_logits": (
        logprobs_from_logits,
        lambda: dict(logits=torch.randn(4, 16), targets=_ids(0, 1, 2, 3)),
    ),
}
LONG = torch.int64
BAD = [
    ("logprobs", dict(targets=_ids(0, 1, 2, 16)), ValueError, "targets"),
    ("logprobs", dict(targets=_ids(0, 1, 2, -5)), ValueError, "targets"),
    ("logprobs", dict(targets=torch.zeros(5, dtype=LONG)), ValueError, "targets"),
    ("logprobs", dict(targets=torch.zeros(3, 4, dtype=LONG)), ValueError, "targets"),
    ("logprobs", dict(targets=torch.zeros(4)), TypeError, "targets"),
    ("logprobs", dict(temperature=0.0), ValueError, "temperature"),
    ("logprobs", dict(temperature=-1.0), ValueError, "temperature"),
    ("logprobs", dict(weight=torch.randn(16, 8, dtype=torch.float64)), TypeError, "weight"),
    ("logprobs", dict(weight=torch.randn(16, 7)), ValueError, "weight"),
    ("logprobs", dict(bias=torch.zeros(15)), ValueError, "bias"),
    ("logprobs", dict(bias=torch.zeros(16, dtype=torch.float64)), ValueError, "bias"),
    ("logprobs", dict(chunk_rows=0), ValueError, "chunk_rows"),
    ("logprobs", dict(hidden=[[0.0] * 8] * 4), TypeError, "hidden"),
    ("kl", dict(ref_hidden=torch.randn(5, 8)), ValueError, "ref_hidden"),
    ("kl", dict(ref_weight=torch.randn(17, 8)), ValueError, "ref_weight"),
    ("kl", dict(ref_weight=torch.randn(16, 8, dtype=torch.float64)), TypeError, "weight"),
    ("kl", dict(ref_hidden=torch.randn(4, 8, dtype=torch.float64)), TypeError, "weight"),
    ("from_logits", dict(targets=_ids(16, 0, 0, 0)), ValueError, "targets"),
    ("from_logits", dict(targets=torch.zeros(4)), TypeError, "targets"),
    ("from_logits", dict(temperature=0.0), ValueError, "temperature"),
]


@pytest.mark.parametrize(
    "op, override, error, match",
    BAD,
    ids=[f"{op}-{next(iter(kw))}-{i}" for i, (op, kw, _, _) in enumerate(BAD)],
)
def test_bad_input(op, override, error, match):
    fn, base = OPS[op]
    with pytest.raises(error, match=match):
        fn(**{**base(), **override})

"""``sample_tokens`` on every backend against the float64 reference (docs/DESIGN.md §4.2)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from inputs import BF16_TOL, FP32_TOL, as64, assert_close, lm_head, needs_cuda, randint, randn

from mosa_kernels import sample_tokens
from mosa_kernels.ops.sample_tokens import CONFIDENCES
from mosa_kernels.random import gumbel, seed_from
from mosa_kernels.reference.sample_tokens import sample_tokens as reference

pytestmark = pytest.mark.usefixtures("poison_outputs")

N, V, D = 37, 1003, 72
CHUNK = 700  # does not divide V, so the last vocabulary chunk is partial
SEED = 1234
CFG_SCALE = 1.5
NEAR_TIE = 1e-4  # fp32 vs fp64 noisy scores: candidates this close may swap


def ref_logits(x, weight=None, x_uncond=None, cfg_scale=0.0, suppress=()):
    """The float64 logits the reference samples from, on the CPU (2-D inputs)."""
    logits = as64(x) if weight is None else as64(x) @ as64(weight).T
    if x_uncond is not None:
        uncond = as64(x_uncond) if weight is None else as64(x_uncond) @ as64(weight).T
        logits = uncond + (cfg_scale + 1.0) * (logits - uncond)
    logits[:, list(suppress)] = float("-inf")
    return logits


def check_sample(token, conf, x, weight=None, *, tol=FP32_TOL, **kw):
    """Compare one call's outputs with the reference run on the same (2-D) inputs.

    At T = 0 tokens must match exactly. At T > 0 a token may differ only where the
    reference's noisy scores of the two candidates are within NEAR_TIE; the confidence is
    compared on the rows whose tokens agree (all rows for confidences that do not depend on
    the token). Returns the reference outputs.
    """
    x_uncond = kw.get("x_uncond")
    args = {k: v for k, v in kw.items() if k != "x_uncond"}
    ref_token, ref_conf = reference(
        as64(x),
        None if weight is None else as64(weight),
        x_uncond=None if x_uncond is None else as64(x_uncond),
        **args,
    )
    assert token.dtype == torch.int64 and conf.dtype == torch.float32
    assert token.device == x.device and conf.device == x.device
    token, conf = token.reshape(-1).cpu(), conf.reshape(-1).cpu()
    vocab = x.shape[-1] if weight is None else weight.shape[0]
    assert ((token >= 0) & (token < vocab)).all(), f"token ids out of range: {token}"

    temperature = kw.get("temperature", 0.0)
    mismatch = token != ref_token
    if temperature == 0:
        assert not mismatch.any(), (
            f"rows {mismatch.nonzero()[:, 0].tolist()}: {token[mismatch].tolist()} "
            f"!= argmax {ref_token[mismatch].tolist()}"
        )
    elif mismatch.any():
        logits = ref_logits(x, weight, x_uncond, kw.get("cfg_scale", 0.0), kw.get("suppress", ()))
        rows = torch.arange(logits.shape[0])[:, None]
        cols = torch.arange(logits.shape[1])[None]
        score = logits / temperature + gumbel(kw["seed"], rows, cols)
        gap = (score.gather(1, ref_token[:, None]) - score.gather(1, token[:, None]))[:, 0]
        assert gap[mismatch].abs().max().item() < NEAR_TIE, (
            f"rows {mismatch.nonzero()[:, 0].tolist()} sampled {token[mismatch].tolist()} "
            f"instead of {ref_token[mismatch].tolist()}; noisy score gaps {gap[mismatch].tolist()}"
        )
    rows = ~mismatch if kw.get("confidence", "prob") == "prob" else slice(None)
    assert_close(conf[rows], ref_conf[rows], rel=tol, floor=0.0, what="confidence")
    return ref_token, ref_conf


@dataclass
class Case:
    fused: bool
    temperature: float
    confidence: str
    tempered: bool = False
    cfg: bool = False
    ids: bool = False  # suppress and exclude_from_confidence

    @property
    def id(self):
        parts = ["fused" if self.fused else "logits", f"T{self.temperature:g}", self.confidence]
        parts += [name for name in ("tempered", "cfg", "ids") if getattr(self, name)]
        return "-".join(parts)


CASES = [
    Case(False, 0.0, "prob"),
    Case(False, 0.7, "prob", tempered=True),
    Case(False, 0.7, "prob", ids=True),
    Case(False, 0.0, "margin", cfg=True),
    Case(False, 0.7, "margin", ids=True),
    Case(False, 0.7, "neg_entropy", tempered=True, cfg=True),
    Case(False, 0.0, "neg_entropy", tempered=True, ids=True),
    Case(False, 0.7, "random", cfg=True),
    Case(True, 0.0, "prob", cfg=True, ids=True),
    Case(True, 0.7, "margin", tempered=True),
    Case(True, 0.7, "neg_entropy", cfg=True, ids=True),
    Case(True, 0.0, "random"),
]
# Ids at both ends of the vocabulary and on both sides of a chunk boundary, one repeated.
SUPPRESS = [0, 699, 700, 1002, 699]
EXCLUDE = [1, 698, 700, 1002]


def make_inputs(fused: bool, device, dtype=torch.float32, n=N, logit_scale=3.0, seed=10):
    """``(x, weight, x_uncond)`` with logits of std ``logit_scale``; uncond correlated with x."""
    if fused:
        x, weight = lm_head(n, V, D, seed=seed, logit_scale=logit_scale, dtype=torch.float64)
    else:
        x, weight = randn((n, V), seed=seed, scale=logit_scale, dtype=torch.float64), None
    x_uncond = 0.8 * x + 0.6 * randn(x.shape, seed=seed + 5, scale=x.std().item(), dtype=x.dtype)

    def cast(t):
        return None if t is None else t.to(device=device, dtype=dtype)

    return cast(x), cast(weight), cast(x_uncond)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_reference(backend, device, case):
    x, weight, x_uncond = make_inputs(case.fused, device)
    if case.ids:  # make a suppressed and an excluded id the clear argmax of some rows
        if weight is None:
            x[0:3, 700] += 30.0
            x[3:5, 698] += 30.0
        else:
            weight[700] = 4.0 * x[0] / x[0].norm()
            weight[698] = 4.0 * x[3] / x[3].norm()
        assert (ref_logits(x, weight)[0].argmax() == 700) and (
            ref_logits(x, weight)[3].argmax() == 698
        )
    settings = dict(
        temperature=case.temperature,
        confidence=case.confidence,
        tempered_confidence=case.tempered,
        seed=SEED,
    )
    if case.cfg:
        settings.update(x_uncond=x_uncond, cfg_scale=CFG_SCALE)
    if case.ids:
        settings.update(suppress=SUPPRESS, exclude_from_confidence=EXCLUDE)
    call = dict(settings)
    if case.ids:  # the op also takes the ids as a tensor on the input device
        call["suppress"] = torch.tensor(SUPPRESS, device=device)
    given = [t for t in (x, weight, x_uncond) if t is not None]
    inputs = [t.clone() for t in given]
    token, conf = sample_tokens(x, weight, vocab_chunk=CHUNK if case.fused else None, **call)
    for before, after in zip(inputs, given, strict=True):
        assert torch.equal(before, after), "sample_tokens modified its input"
    assert token.shape == (N,) and conf.shape == (N,)
    ref_token, _ = check_sample(token, conf, x, weight, **settings)
    if case.ids:
        assert not torch.isin(token.cpu(), torch.tensor(SUPPRESS)).any()
        assert (token[3] == 698) and (case.confidence != "prob" or conf[3] == 0)


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused"])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_chosen_excluded_token_has_zero_confidence(backend, device, fused, temperature):
    n = 13
    x, weight, _ = make_inputs(fused, device, n=n)
    if not fused:  # make one id the argmax of most rows
        x[: n - 3, 777] = x.max(1).values[: n - 3] + 20.0
    settings = dict(temperature=temperature, seed=SEED)
    free_token, _ = sample_tokens(x, weight, vocab_chunk=CHUNK, **settings)
    # Exclude what the first rows choose (exclusion does not change the choice).
    excluded = sorted({int(t) for t in free_token[:4].cpu()} | {777})
    token, conf = sample_tokens(
        x, weight, vocab_chunk=CHUNK, exclude_from_confidence=excluded, **settings
    )
    check_sample(token, conf, x, weight, exclude_from_confidence=excluded, **settings)
    hit = torch.isin(token.cpu(), torch.tensor(excluded))
    assert hit[:4].all()
    assert (conf.cpu()[hit] == 0.0).all(), "an excluded chosen token has probability exactly 0"
    assert (conf.cpu()[~hit] > 0).all()


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused"])
def test_ties_go_to_the_lowest_index(backend, device, fused):
    # Small integers: every logit is exact in fp32 whatever the summation order, so rows have
    # repeated maxima (also across vocabulary chunks) and argmax must take the first.
    n = 29
    if fused:
        x = randint((n, D), -2, 3, seed=3, device=device).float()
        # 40 distinct head rows, each repeated about 25 times across the vocabulary.
        base = randint((40, D), -1, 2, seed=4, device=device).float()
        weight = base[randint((V,), 0, 40, seed=6, device=device)]
        logits = x @ weight.T
    else:
        x = randint((n, V), -20, 3, seed=5, device=device).float()
        x[0, 0] = x[0, -1] = 5.0  # first and last column
        x[1, 698:702] = 5.0  # across the chunk boundary
        weight, logits = None, x
    row_max = logits.max(1, keepdim=True).values
    assert ((logits == row_max).sum(1) > 1).sum() >= n // 2, "the test needs tied rows"
    token, conf = sample_tokens(x, weight, confidence="margin", vocab_chunk=CHUNK)
    expected = logits.argmax(1)
    assert torch.equal(token, expected)
    tied = ((logits == row_max).sum(1) > 1).cpu()
    assert (conf.cpu()[tied] == 0.0).all(), "a tied top-2 has margin exactly 0"
    check_sample(token, conf, x, weight, confidence="margin")


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused"])
def test_leading_dims(backend, device, fused):
    x, weight, _ = make_inputs(fused, device, n=15)
    x3 = x.reshape(3, 5, -1)
    token, conf = sample_tokens(x3, weight, temperature=0.7, confidence="random", seed=SEED)
    assert token.shape == (3, 5) and conf.shape == (3, 5)
    # Rows are numbered in flattened order for the noise.
    check_sample(token, conf, x, weight, temperature=0.7, confidence="random", seed=SEED)
    token, conf = sample_tokens(x3, weight, temperature=0.7, seed=SEED)
    check_sample(token, conf, x, weight, temperature=0.7, seed=SEED)


@pytest.mark.parametrize("confidence", ["margin", "neg_entropy"])
def test_rows_longer_than_a_kernel_block(backend, device, confidence):
    # Kernels stream a row in blocks (1024 columns in the interpreter, up to 4096 compiled):
    # three blocks, the last partial, with ids on both sides of a block boundary.
    vocab = 2100 if device.type == "cpu" else 8300
    x = randn((7, vocab), seed=12, scale=3.0, device=device)
    x[2, 1500] = x[2].max() + 0.5  # the maximum in a later block
    settings = dict(
        temperature=0.7,
        confidence=confidence,
        tempered_confidence=True,
        suppress=[1023, 1024, vocab - 1],
        exclude_from_confidence=[0, 1025, 2047, 2048],
        seed=SEED,
    )
    token, conf = sample_tokens(x, **settings)
    check_sample(token, conf, x, **settings)
    token, conf = sample_tokens(x, confidence="prob")
    check_sample(token, conf, x, confidence="prob")
    # Ties between columns 512 apart (within a lane and across lanes, within a step and across
    # steps, for every tile size) go to the first.
    x[4, 300::512] = x[4].max() + 1.0
    token, conf = sample_tokens(x, confidence="margin")
    assert token[4] == 300 and conf[4] == 0.0
    check_sample(token, conf, x, confidence="margin")


def test_strided_half_and_empty_inputs(backend, device):
    wide = randn((9, 2 * V), seed=14, scale=3.0, device=device)
    x = wide[:, ::2]  # neither rows nor columns contiguous
    token, conf = sample_tokens(x, temperature=0.7, confidence="margin", seed=SEED)
    check_sample(token, conf, x, temperature=0.7, confidence="margin", seed=SEED)
    x16 = x.half()
    token, conf = sample_tokens(x16, confidence="neg_entropy")
    check_sample(token, conf, x16, confidence="neg_entropy")
    for shape in [(0, V), (2, 0, V)]:
        token, conf = sample_tokens(torch.randn(shape, device=device))
        assert token.shape == conf.shape == shape[:-1]
        assert token.dtype == torch.int64 and conf.dtype == torch.float32


def test_extreme_uniform_draw(backend, device):
    # Counter (seed 1072, row 0, col 434) draws the largest uniform, 1 - 2**-24, whose
    # Gumbel noise is finite (16.6). Rounding the draw to 1.0 would make it +inf and pick
    # the very unlikely column 434 (see test_random.EXTREME_TOP).
    x = randn((2, V), seed=8, scale=0.5, device=device)
    x[0, 434] = -60.0
    token, conf = sample_tokens(x, temperature=1.0, seed=1072)
    ref_token, _ = check_sample(token, conf, x, temperature=1.0, seed=1072)
    assert ref_token[0] != 434 and token[0] != 434


def softmax_probs(logits, temperature):
    return torch.softmax(torch.tensor(logits, dtype=torch.float64) / temperature, 0)


def chi_square(counts, probs):
    expected = probs * counts.sum()
    stat = ((counts - expected) ** 2 / expected).sum()
    df = torch.tensor((probs.numel() - 1) / 2, dtype=torch.float64)
    return stat.item(), torch.special.gammaincc(df, stat / 2).item()


@pytest.mark.slow
def test_sampling_follows_tempered_softmax(backend, device):
    # One row of 8 logits repeated; each row index gets its own noise. The interpreter pays
    # per program (row), so Triton on the CPU gets fewer rows (and the test less power).
    interp = backend == "triton" and device.type == "cpu"
    n = 200 if interp else 20000
    logits = [1.0, 0.5, 0.0, -0.5, 0.8, 0.3, -0.2, 0.6]
    temperature = 0.7
    x = torch.tensor(logits, device=device).repeat(n, 1)
    token, conf = sample_tokens(x, temperature=temperature, seed=SEED)
    check_sample(token[:500], conf[:500], x[:500], temperature=temperature, seed=SEED)
    counts = torch.bincount(token.cpu(), minlength=8).double()
    stat, p = chi_square(counts, softmax_probs(logits, temperature))
    assert p > 1e-3, f"chi-square {stat:.1f} on 7 df (p = {p:.1e}), counts {counts.tolist()}"
    if not interp:  # the test has the power to tell T = 0.7 from T = 1
        assert chi_square(counts, softmax_probs(logits, 1.0))[1] < 1e-6
    # Un-tempered confidence of each sampled token: softmax(l)[token].
    expected_conf = softmax_probs(logits, 1.0)[token.cpu()]
    assert_close(conf, expected_conf, rel=FP32_TOL, floor=0.0, what="confidence")


@pytest.mark.slow
def test_seeds(backend, device):
    x = randn((32, 8), seed=2, scale=0.3, device=device)
    settings = dict(temperature=1.0, confidence="random")
    token, conf = sample_tokens(x, seed=5, **settings)
    again = sample_tokens(x[:20], seed=5, **settings)
    assert torch.equal(again[0], token[:20]) and torch.equal(again[1], conf[:20])
    other, other_conf = sample_tokens(x, seed=6, **settings)
    # Independent draws from near-uniform rows agree about 1/8 of the time.
    assert (other == token).float().mean().item() < 0.4
    assert not torch.equal(other_conf, conf)

    gen_token, gen_conf = sample_tokens(x, generator=torch.Generator().manual_seed(3), **settings)
    seed = seed_from(torch.Generator().manual_seed(3))
    check_sample(gen_token, gen_conf, x, confidence="random", temperature=1.0, seed=seed)
    generator = torch.Generator().manual_seed(3)
    first = sample_tokens(x, generator=generator, **settings)
    second = sample_tokens(x, generator=generator, **settings)
    assert torch.equal(first[0], gen_token), "same generator seed, same draws"
    assert not torch.equal(first[1], second[1]), "the generator advances between calls"


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused"])
def test_bf16(backend, device, fused):
    x, weight, x_uncond = make_inputs(fused, device, dtype=torch.bfloat16, n=21)
    settings = dict(x_uncond=x_uncond, cfg_scale=0.5, confidence="prob")
    token, conf = sample_tokens(x, weight, vocab_chunk=CHUNK, **settings)
    if not fused:
        # Upcasting bf16 logits is exact, so the choice is too.
        check_sample(token, conf, x, weight, tol=BF16_TOL, **settings)
        return
    # The fused form rounds logits to bf16: the choice may move to a near-tie.
    logits = ref_logits(x, weight, x_uncond, 0.5)
    chosen = logits.gather(1, token.cpu()[:, None])[:, 0]
    assert (logits.max(1).values - chosen).max() <= BF16_TOL * logits.abs().max()
    expected = torch.softmax(logits, 1).gather(1, token.cpu()[:, None])[:, 0]
    assert_close(conf, expected, rel=BF16_TOL, floor=0.0, what="bf16 confidence")


@needs_cuda
@pytest.mark.parametrize("confidence", ["prob", "margin", "neg_entropy"])
def test_bf16_cuda_realistic_size(backend, device, confidence):
    # A Dream-sized vocabulary (not a multiple of any tile) at a sampler-sized batch.
    n, vocab, d = 256, 151_937, 128
    x = randn((n, vocab), seed=4, scale=3.0, device=device, dtype=torch.bfloat16)
    token, conf = sample_tokens(x, temperature=0.0, confidence=confidence)
    assert torch.equal(token, x.float().argmax(1))
    ref_token, ref_conf = reference(x.double(), confidence=confidence)
    assert_close(conf, ref_conf, rel=BF16_TOL, floor=0.0, what="confidence")
    hidden, weight = lm_head(n, vocab, d, seed=6, dtype=torch.bfloat16, device=device)
    token, conf = sample_tokens(hidden, weight, temperature=0.0, confidence=confidence)
    logits = hidden.double() @ weight.double().T
    chosen = logits.gather(1, token[:, None])[:, 0]
    assert (logits.max(1).values - chosen).max() <= BF16_TOL * logits.abs().max()
    assert conf.shape == (n,) and torch.isfinite(conf).all()


# ---- bad input -------------------------------------------------------------------------


def bad_call(**kw):
    x = kw.pop("x", torch.randn(4, 16))
    return sample_tokens(x, **kw)


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(confidence="entropy"), ValueError, "confidence"),
        (dict(temperature=-0.5), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(x=torch.randn(4, 8), weight=torch.randn(16, 7)), ValueError, "weight"),
        (dict(x=torch.randn(4, 8), weight=torch.randn(16, 8, 1)), ValueError, "weight"),
        (dict(x=torch.randn(4, 8), weight=torch.randn(16, 8).double()), TypeError, "weight"),
        (dict(x_uncond=torch.randn(4, 15)), ValueError, "x_uncond"),
        (dict(x_uncond=torch.randn(4, 16).bfloat16()), ValueError, "x_uncond"),
        (dict(suppress=[3, 16]), ValueError, "suppress"),
        (dict(suppress=[-1]), ValueError, "suppress"),
        (dict(exclude_from_confidence=[99]), ValueError, "exclude_from_confidence"),
        (dict(x=[[0.1, 0.2]]), TypeError, "x"),
        (dict(x_uncond=torch.randn(4, 16), cfg_scale=float("inf")), ValueError, "cfg_scale"),
        (dict(x_uncond=torch.randn(4, 16), cfg_scale=float("nan")), ValueError, "cfg_scale"),
        (dict(x_uncond=torch.randn(4, 16), cfg_scale=-1.0), ValueError, "cfg_scale"),
        (dict(temperature=0.5, generator=1), TypeError, "generator must be a torch.Generator"),
        (dict(suppress=list(range(16))), ValueError, "suppress covers the whole vocabulary"),
        (dict(x=torch.randn(4, 0)), ValueError, "vocabulary is empty"),
        (dict(x=torch.randn(4, 8), weight=torch.randn(0, 8)), ValueError, "vocabulary is empty"),
        (dict(nonfinite="ignore"), ValueError, "nonfinite"),
        (dict(x=torch.randint(0, 5, (4, 16))), TypeError, "x"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_input(kw, error, match):
    with pytest.raises(error, match=match):
        bad_call(**kw)


@needs_cuda
def test_cuda_generator_is_rejected():
    x = torch.randn(4, 16, device="cuda")
    with pytest.raises(ValueError, match="generator"):
        sample_tokens(x, temperature=0.5, generator=torch.Generator(device="cuda"))


@needs_cuda
def test_device_mismatch():
    with pytest.raises(ValueError, match="weight"):
        sample_tokens(torch.randn(4, 8, device="cuda"), torch.randn(16, 8))


NONFINITE_SETTINGS = [dict(temperature=t, confidence=c) for t in (0.0, 0.8) for c in CONFIDENCES]
SMALL_V = 40


@pytest.mark.parametrize(
    "settings", NONFINITE_SETTINGS, ids=lambda s: f"T{s['temperature']}-{s['confidence']}"
)
def test_rows_without_a_finite_choice_raise_naming_them(backend, device, settings):
    """Every backend: the error names the rows (a NaN, a +inf, two +inf, every logit -inf);
    ``nonfinite='mark'`` gives them token -1 and confidence NaN, never another id, and leaves
    the other rows as a call without the bad rows gives them."""
    x = randn((6, SMALL_V), seed=31, scale=3.0, device=device)
    clean = x.clone()
    x[1, 5] = float("nan")
    x[2, 7] = float("inf")
    x[3, [0, 9]] = float("inf")
    x[4] = float("-inf")
    x[5, :-1] = float("-inf")  # one finite logit is a choice
    with pytest.raises(ValueError, match=r"NaN or \+inf.*rows 1, 2, 3, 4 of its leading"):
        sample_tokens(x, seed=SEED, **settings)
    with pytest.raises(ValueError, match=r"rows \(0, 1\), \(1, 0\), \(1, 1\) of"):
        sample_tokens(x[:4].reshape(2, 2, SMALL_V), seed=SEED, **settings)
    token, conf = sample_tokens(x, nonfinite="mark", seed=SEED, **settings)
    assert token[1:5].tolist() == [-1] * 4 and conf[1:5].isnan().all()
    clean[5] = x[5]
    expected_token, expected_conf = sample_tokens(clean, seed=SEED, **settings)
    assert token[[0, 5]].tolist() == expected_token[[0, 5]].tolist()
    assert torch.equal(conf[[0, 5]], expected_conf[[0, 5]])
    assert token[5] == SMALL_V - 1


def test_a_nan_in_the_head_raises_in_the_fused_form(backend, device):
    hidden = randn((3, 16), seed=32, device=device)
    weight = randn((SMALL_V, 16), seed=33, device=device)
    weight[SMALL_V - 3, 4] = float("nan")  # in the last vocabulary chunk
    with pytest.raises(ValueError, match=r"rows 0, 1, 2 of its leading"):
        sample_tokens(hidden, weight, vocab_chunk=16)
    token, conf = sample_tokens(hidden, weight, vocab_chunk=16, nonfinite="mark")
    assert token.tolist() == [-1, -1, -1] and conf.isnan().all()

"""``mosa_kernels.random`` against an independent uint32 implementation of the spec.

lowbias32: x ^= x >> 16; x *= 0x21F0AAAD; x ^= x >> 15; x *= 0x735A2D97; x ^= x >> 15 (mod 2**32),
key = hash(seed), h = hash(hash(key ^ row) ^ col), u = ((h >> 9) + 0.5) / 2**23: 24 significant
bits, so every draw is exact in float32 and float32 backends see the same numbers.
"""

import numpy as np
import pytest
import torch
from inputs import needs_cuda

from mosa_kernels.random import RANDOM_CONFIDENCE_COLUMN, derive_seed, gumbel, seed_from, uniform

MASK = 0xFFFFFFFF


def py_hash(x: int) -> int:
    x &= MASK
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & MASK
    x ^= x >> 15
    x = (x * 0x735A2D97) & MASK
    return x ^ (x >> 15)


def py_uniform(seed: int, row: int, col: int) -> float:
    h = py_hash(py_hash(py_hash(seed) ^ row) ^ col)
    return ((h >> 9) + 0.5) / 2**23


def np_hash(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.uint32)  # uint32 arithmetic wraps mod 2**32
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x21F0AAAD)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x735A2D97)
    x ^= x >> np.uint32(15)
    return x


def np_uniform(seed: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    key = np_hash(np.array(seed, dtype=np.uint32))
    h = np_hash(np_hash(key ^ rows.astype(np.uint32)) ^ cols.astype(np.uint32))
    return ((h >> np.uint32(9)).astype(np.float64) + 0.5) / 2**23


def draws(seed: int, n_rows: int, n_cols: int, device="cpu") -> torch.Tensor:
    rows = torch.arange(n_rows, device=device)[:, None]
    cols = torch.arange(n_cols, device=device)[None]
    return uniform(seed, rows, cols)


def chi2_sf(stat: float, df: int) -> float:
    return torch.special.gammaincc(
        torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)
    ).item()


def test_python_and_numpy_references_agree():
    # The two independent statements of the spec check each other (and the numpy one is
    # then used for bulk comparisons).
    rng = np.random.default_rng(0)
    for seed, row, col in zip(
        rng.integers(0, 2**32, 50),
        rng.integers(0, 2**31, 50),
        rng.integers(0, 2**32, 50),
        strict=True,
    ):
        got = np_uniform(int(seed), np.array([row]), np.array([col]))[0]
        assert got == py_uniform(int(seed), int(row), int(col))


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**31 + 7, MASK])
def test_uniform_matches_spec(seed, device):
    rows = torch.tensor([0, 1, 2, 37, 1000, 65535, 65536, 2**24 + 3, 2**31 - 1], device=device)
    cols = torch.tensor(
        [0, 1, 2, 299, 300, 1002, 32767, 151935, 2**31 - 1, RANDOM_CONFIDENCE_COLUMN],
        device=device,
    )
    got = uniform(seed, rows[:, None], cols[None])
    assert got.dtype == torch.float64 and got.device.type == device.type
    assert got.shape == (rows.numel(), cols.numel())
    expected = np_uniform(seed, rows.cpu().numpy()[:, None], cols.cpu().numpy()[None])
    np.testing.assert_array_equal(got.cpu().numpy(), expected)
    # Spot checks against the pure-Python statement as well.
    for i, j in [(0, 0), (3, 5), (8, 9), (6, 7)]:
        assert got[i, j].item() == py_uniform(seed, int(rows[i]), int(cols[j]))


def test_uniform_bulk_matches_spec_and_is_exact_in_float32(device):
    got = draws(2024, 64, 1031, device).cpu()
    rows, cols = np.arange(64)[:, None], np.arange(1031)[None]
    np.testing.assert_array_equal(got.numpy(), np_uniform(2024, rows, cols))
    assert torch.equal(got.float().double(), got), "draws must be exact in float32"


# (seed, row, col) whose draw is the largest / smallest possible (the top bits of h all ones /
# all zeros), found by a search with np_hash above; test_sample_tokens uses the top one.
EXTREME_TOP = [(519, 1, 370), (1072, 0, 434), (1057, 16, 685)]
EXTREME_BOTTOM = [(0, 0, 0), (780, 16, 391), (976, 31, 130)]


def test_extreme_counters_reach_the_ends_of_the_range():
    for (seed, row, col), value in [(c, 1 - 2**-24) for c in EXTREME_TOP] + [
        (c, 2**-24) for c in EXTREME_BOTTOM
    ]:
        assert py_uniform(seed, row, col) == value
        got = uniform(seed, torch.tensor([row]), torch.tensor([col]))
        assert got.item() == value and got.float().item() == value
        assert torch.isfinite(gumbel(seed, torch.tensor([row]), torch.tensor([col]))).all()
        # The float32 noise a backend computes from the float32 draw is finite too.
        u32 = torch.tensor(value, dtype=torch.float32)
        assert torch.isfinite(-torch.log(-torch.log(u32)))


def test_uniform_strictly_inside_unit_interval():
    u = draws(7, 400, 1000)
    assert u.min().item() > 0.0 and u.max().item() < 1.0
    # The extremes the formula can produce are still inside (0, 1), also in float32.
    lo, hi = 0.5 / 2**23, (2**23 - 0.5) / 2**23
    assert (u >= lo).all() and (u <= hi).all()
    assert 0.0 < torch.tensor(lo).float().item() and torch.tensor(hi).float().item() < 1.0
    assert torch.isfinite(gumbel(7, torch.arange(400)[:, None], torch.arange(1000)[None])).all()


def test_uniform_is_uniform_ks_and_chi_square():
    u = draws(1234, 200, 1000).flatten().sort().values
    n = u.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = torch.maximum(i / n - u, u - (i - 1) / n).max().item()
    assert ks < 1.95 / n**0.5, f"KS statistic {ks:.2e} (p < 0.001)"

    bins = 64
    counts = torch.bincount((u * bins).long(), minlength=bins).double()
    expected = n / bins
    stat = ((counts - expected) ** 2 / expected).sum().item()
    p = chi2_sf(stat, bins - 1)
    assert p > 1e-3, f"chi-square {stat:.1f} on {bins - 1} df, p = {p:.2e}"


def test_neighbouring_counters_are_independent():
    # Pairs (u[r, c], u[r, c + 1]) and (u[r, c], u[r + 1, c]) fill an 8 x 8 grid evenly.
    u = draws(99, 300, 300)
    for a, b in [(u[:, :-1], u[:, 1:]), (u[:-1], u[1:])]:
        cell = ((a * 8).long() * 8 + (b * 8).long()).flatten()
        counts = torch.bincount(cell, minlength=64).double()
        expected = cell.numel() / 64
        stat = ((counts - expected) ** 2 / expected).sum().item()
        assert chi2_sf(stat, 63) > 1e-3, f"chi-square {stat:.1f} on 63 df"


def test_different_seeds_give_unrelated_draws():
    a, b = draws(5, 100, 1000).flatten(), draws(6, 100, 1000).flatten()
    assert (a == b).float().mean().item() < 1e-3
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(corr) < 5 / a.numel() ** 0.5


def test_gumbel_is_minus_log_minus_log_uniform():
    rows, cols = torch.arange(20)[:, None], torch.arange(50)[None]
    u = np_uniform(3, rows.numpy(), cols.numpy())
    np.testing.assert_allclose(gumbel(3, rows, cols).numpy(), -np.log(-np.log(u)), rtol=1e-15)


def test_seed_from_cpu_generator():
    a = seed_from(torch.Generator().manual_seed(11))
    assert a == seed_from(torch.Generator().manual_seed(11))
    assert isinstance(a, int) and 0 <= a < 2**32
    g = torch.Generator().manual_seed(11)
    first, second = seed_from(g), seed_from(g)
    assert first == a and second != first, "each call must advance the generator"
    assert seed_from(torch.Generator().manual_seed(12)) != a
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        x = seed_from(None)
        torch.manual_seed(3)
        assert seed_from(None) == x, "None must draw from torch's default CPU generator"


@needs_cuda
def test_seed_from_rejects_cuda_generator():
    with pytest.raises(ValueError, match="CPU"):
        seed_from(torch.Generator(device="cuda").manual_seed(0))


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3])
def test_derive_seed_keeps_the_mixing_the_trainer_and_diffuguard_used(seed):
    # The formulas written out where they were (align/trainer.py, sampling/diffuguard.py), so
    # shuffles and repair noise stay the same numbers.
    assert derive_seed(seed, 3) == (seed * 1_000_003 + 3) % 2**63
    assert derive_seed(seed, 2 + 500_000) == (seed * 1_000_003 + 2 + 500_000) % 2**63
    assert derive_seed(seed, 5, 1 + 1) == ((seed * 1_000_003 + 5) * 1_000_003 + 1 + 1) % 2**63
    assert derive_seed(seed, 1, 2) != derive_seed(seed, 2, 1)

"""``select_transfer`` on every backend: constructed cases and the reference (docs/DESIGN.md §4.2)."""

import pytest
import torch
from inputs import randint

from mosa_kernels import select_transfer
from mosa_kernels.reference.select_transfer import select_transfer as reference

pytestmark = pytest.mark.usefixtures("poison_outputs")


def tensors(device, conf, masked):
    return (
        torch.tensor(conf, dtype=torch.float32, device=device),
        torch.tensor(masked, dtype=torch.bool, device=device),
    )


def chosen(result):
    """The committed positions of each row, as lists."""
    return [row.nonzero()[:, 0].tolist() for row in result.cpu()]


def check_result(result, conf, masked):
    assert result.dtype == torch.bool
    assert result.device == conf.device and result.shape == conf.shape
    assert not (result & ~masked).any(), "only masked positions may be committed"


def test_ties_go_to_the_lower_index(backend, device):
    conf, masked = tensors(
        device,
        [[0.5] * 6, [0.5, 0.9, 0.5, 0.5, 0.9, 0.5], [0.25] * 6],
        [[True] * 6, [True, False, True, True, True, True], [False, True, False, True, True, True]],
    )
    result = select_transfer(conf, masked, k=2)
    check_result(result, conf, masked)
    assert chosen(result) == [[0, 1], [0, 4], [1, 3]]
    result = select_transfer(conf, masked, k=torch.tensor([3, 1, 2], device=device))
    assert chosen(result) == [[0, 1, 2], [4], [1, 3]]


def test_k_rule_edges(backend, device):
    conf, masked = tensors(
        device,
        [[0.1, 0.7, 0.3, 0.9, 0.2], [0.9, 0.8, 0.7, 0.6, 0.5], [0.3, 0.1, 0.2, 0.6, 0.4]],
        [
            [True, False, True, False, True],
            [False] * 5,
            [True] * 5,
        ],
    )
    # More than the masked count: all masked; nothing masked: nothing.
    assert chosen(select_transfer(conf, masked, k=4)) == [[0, 2, 4], [], [0, 2, 3, 4]]
    assert chosen(select_transfer(conf, masked, k=0)) == [[], [], []]
    assert chosen(select_transfer(conf, masked, k=1)) == [[2], [], [3]]
    per_row = torch.tensor([0, 3, 5], device=device)
    assert chosen(select_transfer(conf, masked, k=per_row)) == [[], [], [0, 1, 2, 3, 4]]
    # A 0-d k tensor applies to every row, an int32 one works too.
    assert chosen(select_transfer(conf, masked, k=torch.tensor(2, device=device))) == [
        [2, 4],
        [],
        [3, 4],
    ]
    per_row = torch.tensor([2, 2, 1], dtype=torch.int32, device=device)
    assert chosen(select_transfer(conf, masked, k=per_row)) == [[2, 4], [], [3]]


def test_threshold_rule(backend, device):
    conf, masked = tensors(
        device,
        [
            [0.5, 0.95, 0.75, 0.25, 0.875],
            [0.99, 0.25, 0.5, 0.125, 0.375],  # masked ones all below: only the best
            [0.9, 0.9, 0.9, 0.9, 0.9],
            [0.5, 0.75, 0.75, 0.25, 0.75],  # exactly at the threshold counts
        ],
        [
            [True, True, True, True, True],
            [False, True, True, True, True],
            [False] * 5,
            [True, True, False, True, True],
        ],
    )
    result = select_transfer(conf, masked, threshold=0.75)
    check_result(result, conf, masked)
    assert chosen(result) == [[1, 2, 4], [2], [], [1, 4]]
    # All below, with tied best: the lower index.
    conf, masked = tensors(device, [[0.25, 0.5, 0.5, 0.125]], [[True, True, True, True]])
    assert chosen(select_transfer(conf, masked, threshold=0.9)) == [[1]]


def test_factor_rule_hand_computed(backend, device):
    # f = 1: the n-th best (1-based) needs conf >= 1 - 1/(n + 1): 1/2, 2/3, 3/4, 4/5, ...
    conf, masked = tensors(
        device,
        [
            [0.7, 0.1, 0.9, 0.95],  # 2nd best 0.7 >= 2/3: two (0.95 is not masked)
            [0.55, 0.9, 0.3, 0.2],  # 2nd best 0.55 < 2/3 (but >= 1/2): one
            [0.5, 0.875, 0.75, 0.75],  # 3rd best is exactly 3/4: three
            [0.25, 0.125, 0.375, 0.0],  # best below 1/2: still the best one
            [0.9, 0.9, 0.9, 0.9],  # nothing masked
        ],
        [
            [True, True, True, False],
            [True, True, True, True],
            [True, True, True, True],
            [True, True, True, True],
            [False] * 4,
        ],
    )
    result = select_transfer(conf, masked, factor=1.0)
    check_result(result, conf, masked)
    assert chosen(result) == [[0, 2], [1], [1, 2, 3], [2], []]
    # f = 0.5: thresholds 3/4, 5/6, 7/8, 9/10.
    conf, masked = tensors(device, [[0.8, 0.875, 0.9, 0.95, 0.85]], [[True] * 5])
    # Ranked 0.95 (n=1), 0.9 (n=2, >= 5/6), 0.875 (n=3, >= 7/8), 0.85 (n=4, < 9/10), 0.8.
    assert chosen(select_transfer(conf, masked, factor=0.5)) == [[1, 2, 3]]


def random_case(device, batch=5, width=37, seed=0):
    conf = torch.rand(batch, width, generator=torch.Generator().manual_seed(seed))
    conf[1 % batch] = (conf[1 % batch] * 8).floor() / 8  # many ties
    masked = torch.rand(batch, width, generator=torch.Generator().manual_seed(seed + 1)) < 0.6
    masked[2 % batch] = False  # a row with nothing masked
    masked[3 % batch] = True  # a row with everything masked
    conf[0, ::3] = float("-inf")  # as samplers write for positions that are not candidates
    return conf.to(device), masked.to(device)


@pytest.mark.parametrize(
    "rule",
    [
        dict(k=5),
        dict(k="per_row"),
        dict(threshold=0.8),
        dict(threshold=0.999),
        dict(factor=0.6),
        dict(factor=3.0),
    ],
    ids=lambda r: "-".join(f"{k}={v}" for k, v in r.items()),
)
def test_random_rows_match_reference(backend, device, rule):
    for seed in range(3):
        conf, masked = random_case(device, seed=10 * seed)
        if rule.get("k") == "per_row":
            rule = dict(k=randint((5,), 0, 40, seed=seed, device=device))
        result = select_transfer(conf, masked, **rule)
        check_result(result, conf, masked)
        expected = reference(conf.cpu(), masked.cpu(), **{k: _cpu(v) for k, v in rule.items()})
        assert torch.equal(result.cpu(), expected), (
            f"seed {seed}: got {chosen(result)}, expected {chosen(expected)}"
        )


def _cpu(value):
    return value.cpu() if isinstance(value, torch.Tensor) else value


def around(value: float) -> list[float]:
    """float32 neighbours of ``value``: below, nearest, above."""
    v32 = torch.tensor(value, dtype=torch.float32)
    return [
        torch.nextafter(v32, torch.tensor(-1.0)).item(),
        v32.item(),
        torch.nextafter(v32, torch.tensor(2.0)).item(),
    ]


@pytest.mark.parametrize(
    "rule",
    [dict(threshold=0.7), dict(threshold=0.95), dict(threshold=0.3), dict(factor=0.3)],
    ids=lambda r: "-".join(f"{k}={v}" for k, v in r.items()),
)
def test_boundary_matches_reference(backend, device, rule):
    # Confidences are float32, the threshold/factor a Python float: the rule compares the
    # actual values (as the reference does), also where float32(1 - f/(n+1)) or
    # float32(threshold) is not the bound itself. Row r puts its n-th best (n = 1..5) on the
    # float32 neighbours of the bound, behind n - 1 sure positions.
    rows, width = [], 6
    for n in range(1, width):
        bound = rule.get("threshold") or 1.0 - rule.get("factor", 0.0) / (n + 1)
        for value in around(bound):
            rows.append([1.0] * (n - 1) + [value] + [0.0] * (width - n))
    conf = torch.tensor(rows, dtype=torch.float32, device=device)
    masked = conf > 0
    masked[:, 0] = True
    expected = reference(conf.cpu(), masked.cpu(), **rule)
    result = select_transfer(conf, masked, **rule)
    wrong = (result.cpu() != expected).any(1).nonzero()[:, 0].tolist()
    assert not wrong, (
        f"rows {[rows[r] for r in wrong]}: got {chosen(result[wrong])}, "
        f"expected {chosen(expected[wrong])}"
    )


def test_empty_and_wide(backend, device):
    conf = torch.rand(0, 7, device=device)
    assert select_transfer(conf, conf > 2, k=1).shape == (0, 7)
    # A row wider than one kernel block.
    conf, masked = random_case(device, batch=4, width=300, seed=4)
    result = select_transfer(conf, masked, k=100)
    assert torch.equal(result.cpu(), reference(conf.cpu(), masked.cpu(), k=100))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_confidence(backend, device, dtype):
    conf, masked = random_case(device, seed=7)
    conf = conf.to(dtype)
    result = select_transfer(conf, masked, threshold=0.7)
    assert torch.equal(result.cpu(), reference(conf.cpu().float(), masked.cpu(), threshold=0.7))


# ---- bad input -------------------------------------------------------------------------


def good():
    conf = torch.rand(3, 6)
    return conf, conf > 0.3


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(k=1, threshold=0.5), dict(threshold=0.5, factor=0.5), dict(k=1, factor=1.0)],
    ids=["none", "k+threshold", "threshold+factor", "k+factor"],
)
def test_exactly_one_rule(kw):
    with pytest.raises(ValueError, match="exactly one"):
        select_transfer(*good(), **kw)


@pytest.mark.parametrize(
    "args, kw, error, match",
    [
        ((torch.rand(3, 6), torch.rand(3, 6) > 0.5), dict(k=-1), ValueError, "k"),
        ((torch.rand(3, 6), torch.rand(3, 6) > 0.5), dict(k=1.5), ValueError, "k"),
        ((torch.rand(3, 6), torch.rand(3, 6) > 0.5), dict(k=torch.tensor([1, 2])), ValueError, "k"),
        ((torch.rand(3, 6), torch.rand(3, 6) > 0.5), dict(k=torch.ones(3)), ValueError, "k"),
        ((torch.rand(3, 6), torch.rand(3, 6) > 0.5), dict(factor=0.0), ValueError, "factor"),
        ((torch.rand(3, 6), torch.rand(3, 6) > 0.5), dict(factor=-1.0), ValueError, "factor"),
        ((torch.rand(3, 6), torch.rand(3, 6) > 0.5), dict(threshold=1.5), ValueError, "threshold"),
        ((torch.rand(3, 6), torch.rand(3, 6) > 0.5), dict(threshold=0.0), ValueError, "threshold"),
        ((torch.rand(3, 6), torch.rand(3, 6) > 0.5), dict(threshold=-0.5), ValueError, "threshold"),
        (
            (torch.rand(3, 6), torch.rand(3, 6) > 0.5),
            dict(threshold=float("nan")),
            ValueError,
            "threshold",
        ),
        (
            (torch.rand(3, 6), torch.ones(3, 6, dtype=torch.int64)),
            dict(k=1),
            ValueError,
            "is_masked",
        ),
        ((torch.rand(3, 6), torch.rand(3, 5) > 0.5), dict(k=1), ValueError, "is_masked"),
        ((torch.rand(3, 6), torch.rand(6) > 0.5), dict(k=1), ValueError, "is_masked"),
        ((torch.rand(3, 6, 2), torch.rand(3, 6, 2) > 0.5), dict(k=1), ValueError, "confidence"),
        ((torch.randint(0, 5, (3, 6)), torch.rand(3, 6) > 0.5), dict(k=1), TypeError, "confidence"),
        (([[0.5]], torch.tensor([[True]])), dict(k=1), TypeError, "confidence"),
    ],
)
def test_bad_input(args, kw, error, match):
    with pytest.raises(error, match=match):
        select_transfer(*args, **kw)


def test_a_negative_tensor_k_is_refused(backend, device):
    conf, masked = tensors(device, [[0.1, 0.7], [0.9, 0.8]], [[True, True], [True, True]])
    with pytest.raises(ValueError, match=r"k must be >= 0 in every row, got k\[0\] = -1"):
        select_transfer(conf, masked, k=torch.tensor([-1, 2], device=device))
    with pytest.raises(ValueError, match=r"got k\[0\] = -3"):
        select_transfer(conf, masked, k=torch.tensor(-3, device=device))

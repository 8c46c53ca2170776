"""``mosa_kernels.ops._checks.check_positive_int``: the one positive-int check of the package."""

import re

import pytest

from mosa_kernels.ops._checks import check_positive_int


def test_check_positive_int_returns_a_positive_int():
    assert check_positive_int("rounds", 3) == 3


@pytest.mark.parametrize("bad", [0, -2, True, 1.0, "3", None])
def test_check_positive_int_refuses_with_the_callers_wording(bad):
    got = re.escape(repr(bad))
    with pytest.raises(ValueError, match=rf"^rounds must be a positive int, got {got}$"):
        check_positive_int("rounds", bad)
    with pytest.raises(ValueError, match=rf"^rounds must be an int >= 1, got {got}$"):
        check_positive_int("rounds", bad, expected="an int >= 1")

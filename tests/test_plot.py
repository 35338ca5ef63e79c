"""The benchmark plots' axis ticks (benchmarks/_plot.py): round values inside the data range."""

from __future__ import annotations

import math

import pytest

from benchmarks._plot import nice_ticks


@pytest.mark.parametrize("lo,hi", [(34.58, 80.861), (0.0, 1.0), (0.91, 0.999), (-3.0, 7.0), (1e4, 3.3e6)])
def test_ticks_are_round_steps_inside_the_range(lo: float, hi: float) -> None:
    ticks, decimals = nice_ticks(lo, hi)
    assert 3 <= len(ticks) <= 11 and lo - 1e-9 <= ticks[0] and ticks[-1] <= hi + 1e-9
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6
    assert all(f"{t:.{decimals}f}" != f"{u:.{decimals}f}" for t, u in zip(ticks, ticks[1:]))  # labels distinct


def test_a_scale_of_40_to_80_is_labelled_in_tens() -> None:
    assert nice_ticks(34.58, 80.861) == ([40, 50, 60, 70, 80], 0)

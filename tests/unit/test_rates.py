"""Rates read from pictures and their Wilson intervals, against values worked out by hand."""

from __future__ import annotations

import pytest

from textloc.evaluation.rates import Rate, pooled, wilson_interval


def test_wilson_interval_matches_the_formula_and_stays_inside_zero_one() -> None:
    # 90 %: z = 1.6449; 30 of 64: p = 0.46875, centre (p + z^2/128) / (1 + z^2/64) = 0.4700,
    # half width z sqrt(p(1-p)/64 + z^2/16384) / (1 + z^2/64) = 0.1005
    low, high = wilson_interval(30, 64)
    assert low == pytest.approx(0.3695, abs=1e-4) and high == pytest.approx(0.5705, abs=1e-4)
    assert wilson_interval(0, 64)[0] == 0.0 and 0 < wilson_interval(0, 64)[1] < 0.05
    assert wilson_interval(64, 64)[1] == 1.0 and 0.95 < wilson_interval(64, 64)[0] < 1.0
    assert wilson_interval(30, 64, confidence=0.95)[0] < low  # a wider interval at higher confidence


def test_rates_pool_over_seeds_and_tell_when_they_are_apart() -> None:
    none = pooled([Rate(30, 64), Rate(28, 64), Rate(32, 64)])
    hard = pooled([Rate(10, 64), Rate(12, 64), Rate(8, 64)])
    assert (none.successes, none.count) == (90, 192) and str(hard).startswith("0.16 [")
    assert hard.separated_below(none) and not none.separated_below(hard)
    assert not Rate(20, 64).separated_below(Rate(24, 64))  # 0.31 vs 0.38: the intervals overlap
    assert hard.as_dict()["pictures"] == 192


def test_a_rate_needs_pictures_and_a_possible_count() -> None:
    with pytest.raises(ValueError, match="at least one picture"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)

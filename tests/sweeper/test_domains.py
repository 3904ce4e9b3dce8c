"""Domains map [0, 1) onto their values, keep to their bounds and lay out grids as TensorBoard does."""

import math

import pytest

from sweeper import Discrete, IntInterval, RealInterval

UNITS = [i / 1000 for i in range(1000)]


def test_discrete_from_unit_covers_each_value_equally():
    domain = Discrete(values=["adam", "sgd", "rmsprop"])
    drawn = [domain.from_unit(u) for u in UNITS]
    assert {v: drawn.count(v) for v in domain.values} == {"adam": 334, "sgd": 333, "rmsprop": 333}


def test_real_interval_stays_in_bounds_and_is_a_float():
    domain = RealInterval(min=0.1, max=0.5)
    assert all(0.1 <= domain.from_unit(u) <= 0.5 and isinstance(domain.from_unit(u), float) for u in UNITS)


def test_log_real_interval_puts_half_the_draws_below_the_geometric_mean():
    domain = RealInterval(min=1e-4, max=1e-1, log=True)
    drawn = [domain.from_unit(u) for u in UNITS]
    assert sum(v < math.sqrt(1e-4 * 1e-1) for v in drawn) == 500


def test_int_interval_hits_both_ends_evenly():
    domain = IntInterval(min=1, max=3)
    drawn = [domain.from_unit(u) for u in UNITS]
    assert set(drawn) == {1, 2, 3} and all(isinstance(v, int) for v in drawn)
    assert min(drawn.count(v) for v in (1, 2, 3)) >= 333


def test_log_int_interval_stays_in_bounds_and_reaches_both_ends():
    domain = IntInterval(min=1, max=1000, log=True)
    drawn = [domain.from_unit(u) for u in UNITS]
    assert all(1 <= v <= 1000 for v in drawn)
    assert domain.from_unit(0.0) == 1 and domain.from_unit(0.99999) == 1000
    assert sum(v <= 32 for v in drawn) > 400  # log-uniform: as many draws below ~sqrt(1000) as above


def test_grid_default_is_the_endpoints_as_in_tensorboards_tutorial():
    assert RealInterval(min=0.1, max=0.5).grid(2) == [0.1, 0.5]
    assert IntInterval(min=1, max=3).grid(2) == [1, 3]


def test_grid_points_are_even_and_log_spaced_when_log():
    assert RealInterval(min=0.0, max=1.0).grid(5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert RealInterval(min=1e-4, max=1e-1, log=True).grid(4) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    assert IntInterval(min=1, max=3).grid(5) == [1, 2, 3]


@pytest.mark.parametrize("make", [
    lambda: RealInterval(min=2.0, max=1.0),
    lambda: IntInterval(min=3, max=3),
    lambda: RealInterval(min=-1.0, max=1.0, log=True),
    lambda: Discrete(values=[]),
    lambda: Discrete(values=["a", 1]),
])
def test_invalid_domains_cannot_be_built(make):
    with pytest.raises(ValueError):
        make()

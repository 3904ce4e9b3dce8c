"""Domains map [0, 1) onto their values, keep to their bounds and lay out grids as TensorBoard does."""

import math
import re

import pytest

from sweeper import Discrete, Fixed, IntInterval, RealInterval

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


def test_stepped_real_interval_keeps_min_plus_whole_steps_exactly():
    domain = RealInterval(min=0.1, max=0.5, step=0.1)

    assert domain.size == 5
    assert sorted({domain.from_unit(u) for u in UNITS}) == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert domain.grid(3) == [0.1, 0.3, 0.5]
    assert domain.contains(0.3) and not domain.contains(0.35)


def test_stepped_real_interval_stops_at_the_last_step_inside_max():
    assert sorted({RealInterval(min=0.0, max=1.0, step=0.3).from_unit(u) for u in UNITS}) == [0.0, 0.3, 0.6, 0.9]


def test_stepped_int_interval_keeps_min_plus_whole_steps():
    domain = IntInterval(min=16, max=128, step=16)

    assert domain.size == 8
    assert sorted({domain.from_unit(u) for u in UNITS}) == [16, 32, 48, 64, 80, 96, 112, 128]
    assert domain.grid(3) == [16, 80, 128]
    assert domain.contains(48) and not domain.contains(50)


@pytest.mark.parametrize("domain, value", [
    (Discrete(values=["adam", "sgd"]), "sgd"),
    (RealInterval(min=0.0, max=2.0), 0.5),
    (RealInterval(min=1e-4, max=1e-1, log=True), 1e-3),
    (RealInterval(min=0.1, max=0.5, step=0.1), 0.4),
    (IntInterval(min=1, max=9), 4),
    (IntInterval(min=1, max=1000, log=True), 37),
    (IntInterval(min=0, max=100, step=25), 75),
    (Fixed(value=True), True),
])
def test_to_unit_is_the_inverse_of_from_unit(domain, value):
    u = domain.to_unit(value)

    assert 0 <= u < 1
    assert domain.from_unit(u) == pytest.approx(value)


@pytest.mark.parametrize("make, rule", [
    (lambda: RealInterval(min=1e-4, max=1.0, log=True, step=0.1), "step and log cannot be combined"),
    (lambda: IntInterval(min=1, max=9, step=0), "step (0) must be > 0"),
    (lambda: RealInterval(min=0.0, max=0.5, step=1.0), "step (1.0) must be at most max - min (0.5)"),
    (lambda: IntInterval(min=1, max=9, step=0.5), "must be an integer"),
])
def test_bad_steps_are_refused_with_the_rule(make, rule):
    with pytest.raises(ValueError, match=re.escape(rule)):
        make()

"""Property-based checks: every domain maps the whole unit interval into itself, with the right type."""

from __future__ import annotations

import math

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sweeper import Discrete, IntInterval, RealInterval, make_strategy, parse_spec

units = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
PROPERTY = settings(max_examples=200, deadline=None, derandomize=True)


@st.composite
def real_intervals(draw: st.DrawFn) -> RealInterval:
    log = draw(st.booleans())
    low = draw(st.floats(min_value=1e-8, max_value=1e6) if log else finite)
    width = draw(st.floats(min_value=1e-6, max_value=1e6))
    high = low * (1.0 + width) if log else low + width * max(1.0, abs(low))
    assume(high > low)
    return RealInterval(min=low, max=high, log=log)


@st.composite
def int_intervals(draw: st.DrawFn) -> IntInterval:
    log = draw(st.booleans())
    low = draw(st.integers(min_value=1 if log else -10**9, max_value=10**9))
    high = draw(st.integers(min_value=low + 1, max_value=low + 10**9))
    return IntInterval(min=low, max=high, log=log)


discrete_values = st.one_of(
    st.lists(st.integers(-10**6, 10**6), min_size=1, max_size=20, unique=True),
    st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=20, unique=True),
    st.lists(st.booleans(), min_size=1, max_size=2, unique=True),
)


@PROPERTY
@given(real_intervals(), units)
def test_real_interval_maps_the_unit_interval_into_its_bounds(domain: RealInterval, u: float) -> None:
    value = domain.from_unit(u)
    assert isinstance(value, float) and domain.min <= value <= domain.max


@PROPERTY
@given(real_intervals(), units, units)
def test_real_interval_mapping_keeps_order(domain: RealInterval, u: float, v: float) -> None:
    low, high = sorted((u, v))
    assert domain.from_unit(low) <= domain.from_unit(high)


@PROPERTY
@given(int_intervals(), units)
def test_int_interval_maps_the_unit_interval_onto_integers_in_bounds(domain: IntInterval, u: float) -> None:
    value = domain.from_unit(u)
    assert type(value) is int and domain.min <= value <= domain.max


@PROPERTY
@given(discrete_values, units)
def test_discrete_maps_the_unit_interval_onto_its_values(values: list, u: float) -> None:
    domain = Discrete(values=values)
    assert domain.contains(domain.from_unit(u))


@PROPERTY
@given(discrete_values)
def test_discrete_unit_cells_are_equal_and_cover_every_value(values: list) -> None:
    domain = Discrete(values=values)
    n = len(values)
    assert [domain.from_unit((i + 0.5) / n) for i in range(n)] == values


@PROPERTY
@given(real_intervals(), st.integers(min_value=2, max_value=50))
def test_grid_starts_and_ends_at_the_bounds_and_is_sorted(domain: RealInterval, points: int) -> None:
    grid = domain.grid(points)
    assert len(grid) == points and grid[0] == domain.min and grid[-1] == domain.max
    assert all(a <= b for a, b in zip(grid, grid[1:]))


@PROPERTY
@given(st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=4), st.integers(0, 2**32),
       st.booleans())
def test_random_over_listed_values_is_a_permutation_of_the_grid(sizes: list[int], seed: int, limit: bool) -> None:
    names = ("units", "depth", "dropout", "activation")  # mlp's own: values are not checked before training
    hparams = {name: {"type": "discrete", "values": list(range(size))} for name, size in zip(names, sizes)}
    total = math.prod(sizes)
    search = {"strategy": "random", "seed": seed, **({"max_trials": max(1, total // 2)} if limit else {})}
    spec = parse_spec({"name": "p", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
                       "hparams": hparams, "search": search})
    strategy = make_strategy(spec)
    drawn = [tuple(strategy.config_at(k).values()) for k in range(strategy.total)]
    assert len(set(drawn)) == len(drawn) == (max(1, total // 2) if limit else total)


@PROPERTY
@given(int_intervals(), units)
def test_int_interval_to_unit_finds_a_point_that_maps_back(domain: IntInterval, u: float) -> None:
    value = domain.from_unit(u)

    assert domain.from_unit(domain.to_unit(value)) == value


@PROPERTY
@given(st.integers(-10**6, 10**6), st.integers(1, 1000), st.integers(1, 200), units)
def test_stepped_int_interval_lands_on_its_lattice_and_maps_back(low: int, step: int, steps: int, u: float) -> None:
    domain = IntInterval(min=low, max=low + step * steps, step=step)

    value = domain.from_unit(u)

    assert (value - low) % step == 0 and low <= value <= domain.max
    assert domain.from_unit(domain.to_unit(value)) == value


@PROPERTY
@given(st.decimals(min_value=-1000, max_value=1000, places=2), st.sampled_from(["0.01", "0.05", "0.1", "0.25", "1"]),
       st.integers(1, 100), units)
def test_stepped_real_interval_gives_the_decimal_values_people_write(low, step, steps: int, u: float) -> None:
    from decimal import Decimal

    domain = RealInterval(min=float(low), max=float(low + Decimal(step) * steps), step=float(step))

    value = domain.from_unit(u)

    assert domain.size == steps + 1
    # Exactly min + k * step as a decimal, so 0.1 + 0.2 comes out as 0.3.
    k = round((Decimal(repr(value)) - low) / Decimal(step))
    assert value == float(low + k * Decimal(step)) and 0 <= k <= steps
    assert domain.from_unit(domain.to_unit(value)) == value


@PROPERTY
@given(real_intervals(), units)
def test_real_interval_to_unit_inverts_from_unit(domain: RealInterval, u: float) -> None:
    value = domain.from_unit(u)

    assert math.isclose(domain.from_unit(domain.to_unit(value)), value, rel_tol=1e-9, abs_tol=1e-9 * abs(domain.max))

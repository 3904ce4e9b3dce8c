"""One suite that every search strategy must pass, over plain, stepped, log-scaled and conditional spaces."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeper import make_strategy, parse_spec
from sweeper._conditions import holds

# Spaces of any hparams, not one model's: see tests/conftest.py.
pytestmark = pytest.mark.usefixtures("any_hparams_model")

SPACES = {
    "mixed": {
        "units": {"type": "discrete", "values": [16, 32, 64]},
        "dropout": {"type": "real_interval", "min": 0.1, "max": 0.5, "step": 0.1},
        "depth": {"type": "int_interval", "min": 1, "max": 3},
        "learning_rate": {"type": "real_interval", "min": 1.0e-4, "max": 1.0e-1, "log": True},
        "filters": {"type": "int_interval", "min": 8, "max": 128, "log": True},
        "batch_norm": {"type": "discrete", "values": [True, False]},
        "batch_size": 64,
    },
    "conditional": {
        "optimizer": {"type": "discrete", "values": ["adam", "sgd", "rmsprop"]},
        "momentum": {"type": "real_interval", "min": 0.5, "max": 0.9, "step": 0.2, "when": {"optimizer": "sgd"}},
        "nesterov": {"type": "discrete", "values": [True, False], "when": {"optimizer": "sgd"}},
        "rho": {"type": "discrete", "values": [0.8, 0.9], "when": {"optimizer": "rmsprop"}},
        "units": {"type": "int_interval", "min": 16, "max": 64, "step": 16},
    },
    "listed": {
        "optimizer": {"type": "discrete", "values": ["adam", "sgd"]},
        "momentum": {"type": "discrete", "values": [0.0, 0.9], "when": {"optimizer": "sgd"}},
        "units": {"type": "discrete", "values": [16, 32, 64]},
    },
}
SEARCHES = {
    "grid": {"strategy": "grid", "grid_points": 3},
    "random": {"strategy": "random", "max_trials": 60, "seed": 7},
    "pbt": {"strategy": "pbt", "population": 20, "interval_epochs": 2, "mutable": ["units"], "seed": 7},
}
CASES = [pytest.param(space, search, id=f"{search}-{space}") for space in SPACES for search in SEARCHES]


def spec_for(space: str, search: str | dict):
    search = SEARCHES[search] if isinstance(search, str) else search
    return parse_spec({"name": "contract", "model": "any_hparams", "dataset": "digits",
                       "objective": {"metric": "val_accuracy"}, "hparams": SPACES[space], "search": search})


def configs(strategy) -> list[dict]:
    return [strategy.config_at(k) for k in range(strategy.total)]


@pytest.mark.parametrize("space, search", CASES)
def test_every_value_lies_in_its_domain_with_the_domains_type(space, search):
    spec = spec_for(space, search)
    domains = spec.search_space()

    for config in configs(make_strategy(spec)):
        for name, value in config.items():
            assert domains[name].contains(value), (name, value)
            expected = {"real_interval": float, "int_interval": int}.get(domains[name].type)
            assert expected is None or type(value) is expected


@pytest.mark.parametrize("space, search", CASES)
def test_an_hparam_is_present_exactly_when_its_condition_holds(space, search):
    spec = spec_for(space, search)
    domains = spec.search_space()

    for config in configs(make_strategy(spec)):
        assert set(config) == {name for name, domain in domains.items() if holds(domain, config)}
        assert list(config) == [name for name in domains if name in config]  # spec order


@pytest.mark.parametrize("space, search", CASES)
def test_trial_k_is_the_same_from_a_fresh_strategy_in_any_order(space, search):
    # What a server restart amounts to: a new strategy object, asked for indices in another order.
    first = configs(make_strategy(spec_for(space, search)))
    again = make_strategy(spec_for(space, search))

    assert [again.config_at(k) for k in reversed(range(again.total))] == first[::-1]


@pytest.mark.parametrize("space, search", CASES)
def test_asking_past_the_end_is_detected(space, search):
    strategy = make_strategy(spec_for(space, search))

    with pytest.raises(IndexError, match=f"0 <= index < {strategy.total}"):
        strategy.config_at(strategy.total)
    with pytest.raises(IndexError):
        strategy.config_at(-1)


@pytest.mark.parametrize("search", ["grid", {"strategy": "random", "seed": 3}])
def test_a_listed_space_is_exhausted_without_repeats(search):
    strategy = make_strategy(spec_for("listed", search))
    seen = configs(strategy)

    # adam x 3 units, sgd x 2 momenta x 3 units
    assert strategy.total == strategy.size == 9
    assert len({tuple(sorted(c.items())) for c in seen}) == 9


def test_grid_size_counts_each_branch_once():
    strategy = make_strategy(spec_for("conditional", "grid"))

    # units: 3 of its 4 steps (grid_points 3); adam: 1, sgd: momentum 3 steps x nesterov 2, rmsprop: rho 2
    assert strategy.size == strategy.total == 3 * (1 + 3 * 2 + 2)
    assert len({tuple(sorted(c.items())) for c in configs(strategy)}) == strategy.size


def test_random_trial_k_depends_on_the_seed():
    a = make_strategy(spec_for("mixed", {"strategy": "random", "max_trials": 20, "seed": 1}))
    b = make_strategy(spec_for("mixed", {"strategy": "random", "max_trials": 20, "seed": 2}))

    assert configs(a) != configs(b)


def test_a_grid_of_ten_to_the_twelfth_points_is_enumerated_lazily():
    space = {f"h{i}": {"type": "discrete", "values": list(range(10))} for i in range(12)}
    spec = parse_spec({"name": "huge", "model": "any_hparams", "dataset": "digits", "objective": {"metric": "val_accuracy"},
                       "hparams": space, "search": {"strategy": "grid"}})
    started = time.perf_counter()

    strategy = make_strategy(spec)
    last = strategy.config_at(10**12 - 1)

    assert strategy.size == 10**12
    assert last == {f"h{i}": 9 for i in range(12)}
    assert strategy.config_at(123_456_789_012) == dict(zip(space, map(int, "123456789012")))
    # Generous: materialising the grid would take hours and terabytes, not a second.
    assert time.perf_counter() - started < 5


@st.composite
def conditional_spaces(draw: st.DrawFn) -> dict:
    """A few discrete hparams, each later one maybe conditional on an earlier one's values."""
    space: dict = {}
    for i in range(draw(st.integers(1, 4))):
        values = list(range(draw(st.integers(1, 3))))
        domain: dict = {"type": "discrete", "values": values}
        if space and draw(st.booleans()):
            parent = draw(st.sampled_from(list(space)))
            domain["when"] = {parent: draw(st.lists(st.sampled_from(space[parent]["values"]), min_size=1,
                                                    unique=True))}
        space[f"h{i}"] = domain
    return space


@settings(max_examples=150, deadline=None, derandomize=True)
@given(conditional_spaces(), st.integers(0, 2**32))
def test_grid_and_random_enumerate_exactly_the_distinct_active_configurations(space, seed):
    # Brute force: every combination of all values, with inactive hparams dropped, deduplicated.
    names = list(space)
    spec = parse_spec({"name": "p", "model": "any_hparams", "dataset": "digits", "objective": {"metric": "val_accuracy"},
                       "hparams": space, "search": {"strategy": "grid"}})
    domains = spec.search_space()
    expected = set()
    for values in itertools.product(*(space[name]["values"] for name in names)):
        full = dict(zip(names, values))
        active: dict = {}
        for name in names:  # parents come first in these spaces
            if holds(domains[name], active):
                active[name] = full[name]
        expected.add(tuple(sorted(active.items())))

    grid = make_strategy(spec)
    random = make_strategy(spec.model_copy(update={"search": spec.search.model_copy(
        update={"strategy": "random", "seed": seed})}))

    for strategy in (grid, random):
        found = [tuple(sorted(c.items())) for c in configs(strategy)]
        assert strategy.size == len(found) == len(set(found))
        assert set(found) == expected

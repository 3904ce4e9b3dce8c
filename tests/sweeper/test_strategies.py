"""Grid and random strategies: which configuration trial k gets, for every strategy alike."""

import itertools

import pytest

from sweeper import GridStrategy, RandomStrategy, make_strategy, parse_spec

# Spaces of any hparams, not one model's: see tests/conftest.py.
pytestmark = pytest.mark.usefixtures("any_hparams_model")

MIXED = {
    "units": {"type": "discrete", "values": [16, 32, 64]},
    "dropout": {"type": "real_interval", "min": 0.1, "max": 0.5},
    "depth": {"type": "int_interval", "min": 1, "max": 3},
    "learning_rate": {"type": "real_interval", "min": 1.0e-4, "max": 1.0e-1, "log": True},
    "optimizer": {"type": "discrete", "values": ["adam", "sgd"]},
    "batch_size": 64,
}
DISCRETE = {
    "units": {"type": "discrete", "values": [16, 32, 64, 128]},
    "optimizer": {"type": "discrete", "values": ["adam", "sgd", "rmsprop"]},
    "batch_norm": {"type": "discrete", "values": [True, False]},
    "epochs_hint": 3,
}


def sweep(hparams, **search):
    return parse_spec({"name": "s", "model": "any_hparams", "dataset": "digits",
                       "objective": {"metric": "val_accuracy"}, "hparams": hparams, "search": search})


def all_configs(strategy):
    return [strategy.config_at(k) for k in range(strategy.total)]


@pytest.mark.parametrize("search", [{"strategy": "grid"}, {"strategy": "random", "max_trials": 30, "seed": 3}])
def test_every_configuration_lies_in_its_domains(search):
    spec = sweep(MIXED, **search)
    space = spec.search_space()
    for config in all_configs(make_strategy(spec)):
        assert list(config) == list(space)
        assert all(space[name].contains(value) for name, value in config.items()), config


@pytest.mark.parametrize("search", [{"strategy": "grid"}, {"strategy": "random", "max_trials": 10, "seed": 3}])
def test_configurations_are_reproducible_across_instances(search):
    spec = sweep(MIXED, **search)
    assert all_configs(make_strategy(spec)) == all_configs(make_strategy(spec))


def test_grid_enumerates_discrete_values_times_interval_endpoints():
    strategy = make_strategy(sweep(MIXED, strategy="grid"))
    assert isinstance(strategy, GridStrategy)
    assert strategy.total == 3 * 2 * 2 * 2 * 2
    configs = all_configs(strategy)
    expected = itertools.product([16, 32, 64], [0.1, 0.5], [1, 3], [1.0e-4, 1.0e-1], ["adam", "sgd"])
    assert [tuple(c.values())[:5] for c in configs] == [tuple(e) for e in expected]
    assert all(c["batch_size"] == 64 for c in configs)


def test_grid_points_spaces_intervals_evenly_and_log_when_asked():
    strategy = make_strategy(sweep({"lr": {"type": "real_interval", "min": 1e-4, "max": 1e-1, "log": True}},
                                   strategy="grid", grid_points=4))
    assert [c["lr"] for c in all_configs(strategy)] == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])


def test_grid_stops_at_max_trials():
    assert make_strategy(sweep(MIXED, strategy="grid", max_trials=5)).total == 5


def test_grid_past_its_end_is_an_error():
    strategy = make_strategy(sweep(DISCRETE, strategy="grid"))
    with pytest.raises(IndexError, match="0 <= index < 24"):
        strategy.config_at(24)


def test_random_depends_on_seed():
    a = all_configs(make_strategy(sweep(MIXED, strategy="random", max_trials=5, seed=1)))
    b = all_configs(make_strategy(sweep(MIXED, strategy="random", max_trials=5, seed=2)))
    assert a != b


def test_random_trial_k_depends_only_on_seed_and_k():
    short = make_strategy(sweep(MIXED, strategy="random", max_trials=3, seed=7))
    long = make_strategy(sweep(MIXED, strategy="random", max_trials=50, seed=7))
    assert all_configs(short) == all_configs(long)[:3]


def test_random_in_a_discrete_space_covers_it_without_repeats():
    strategy = make_strategy(sweep(DISCRETE, strategy="random", seed=5))
    assert isinstance(strategy, RandomStrategy) and strategy.total == 24
    seen = [tuple(c.values()) for c in all_configs(strategy)]
    assert len(set(seen)) == 24
    grid = {tuple(c.values()) for c in all_configs(make_strategy(sweep(DISCRETE, strategy="grid")))}
    assert set(seen) == grid


def test_random_in_a_discrete_space_is_shuffled_not_grid_order():
    random_order = all_configs(make_strategy(sweep(DISCRETE, strategy="random", seed=5)))
    assert random_order != all_configs(make_strategy(sweep(DISCRETE, strategy="grid")))


def test_random_discrete_with_max_trials_below_space_size_has_no_repeats():
    strategy = make_strategy(sweep(DISCRETE, strategy="random", max_trials=10, seed=0))
    assert len({tuple(c.values()) for c in all_configs(strategy)}) == 10


def test_random_over_a_huge_discrete_space_is_lazy():
    huge = {f"h{i}": {"type": "discrete", "values": list(range(10))} for i in range(12)}  # 10^12 points
    strategy = make_strategy(sweep(huge, strategy="random", max_trials=100, seed=1))
    assert len({tuple(c.values()) for c in all_configs(strategy)}) == 100

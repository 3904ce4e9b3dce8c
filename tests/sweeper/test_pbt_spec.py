"""The spec rules of Population Based Training, each problem named by its field, all found in one pass."""

from __future__ import annotations

from typing import Any

import pytest

from sweeper import PopulationStrategy, SpecError, make_strategy, parse_spec


def spec(search: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    return {"name": "pbt", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
            "hparams": {"learning_rate": {"type": "real_interval", "min": 1e-4, "max": 1e-1, "log": True},
                        "dropout": {"type": "real_interval", "min": 0.0, "max": 0.5},
                        "optimizer": {"type": "discrete", "values": ["adam", "sgd"]},
                        "momentum": {"type": "real_interval", "min": 0.0, "max": 0.9, "when": {"optimizer": "sgd"}},
                        "units": 64},
            "search": search if search is not None else {"strategy": "pbt", "population": 4, "interval_epochs": 2,
                                                         "mutable": ["learning_rate", "dropout"], "max_epochs": 6},
            **overrides}


def problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as raised:
        parse_spec(data)
    return {".".join(map(str, path)): rule for path, rule in raised.value.problems}


def test_a_pbt_sweeps_trials_are_its_population_and_max_epochs_sets_train_epochs():
    parsed = parse_spec(spec())
    assert parsed.train.epochs == 6
    strategy = make_strategy(parsed)
    assert isinstance(strategy, PopulationStrategy) and strategy.total == 4
    firsts = [strategy.config_at(k) for k in range(4)]
    assert firsts == [make_strategy(parse_spec(spec())).config_at(k) for k in range(4)], "seeded"
    assert len({config["learning_rate"] for config in firsts}) == 4


def test_pbt_needs_population_interval_and_mutable_each_named():
    found = problems(spec({"strategy": "pbt"}))
    assert set(found) == {"search.population", "search.interval_epochs", "search.mutable"}
    assert all("required for pbt" in rule for rule in found.values())


def test_every_pbt_rule_is_reported_in_one_pass_with_its_field():
    found = problems(spec({"strategy": "pbt", "population": 4, "interval_epochs": 5, "max_epochs": 6,
                           "max_trials": 8, "mutable": ["units", "momentum", "missing", "dropout", "dropout"]},
                          train={"epochs": 5}, stopping={"rule": "asha"}))
    assert "differ (6 and 5)" in found["search.max_epochs"]
    assert "must be < the epochs each member trains (5)" in found["search.interval_epochs"]
    assert "must equal population (4)" in found["search.max_trials"]
    assert "fixed hparam" in found["search.mutable.0"]
    assert "conditional" in found["search.mutable.1"]
    assert "not an hparam" in found["search.mutable.2"]
    assert "named twice" in found["search.mutable.4"]
    assert "search.mutable.3" not in found
    assert "pbt decides itself" in found["stopping.rule"]


def test_max_trials_equal_to_population_and_matching_epochs_are_accepted():
    parsed = parse_spec(spec({"strategy": "pbt", "population": 4, "interval_epochs": 2, "max_trials": 4,
                              "max_epochs": 6, "mutable": ["learning_rate"]}, train={"epochs": 6}))
    assert make_strategy(parsed).total == 4


def test_pbt_fields_are_refused_on_other_strategies():
    found = problems(spec({"strategy": "random", "max_trials": 4, "population": 4, "interval_epochs": 2,
                           "mutable": ["dropout"], "max_epochs": 6}))
    assert set(found) == {"search.population", "search.interval_epochs", "search.mutable", "search.max_epochs"}
    assert "only pbt search reads population" in found["search.population"]


def test_warm_start_and_several_objectives_are_refused_with_pbt():
    search = {"strategy": "pbt", "population": 4, "interval_epochs": 2, "mutable": ["dropout"], "warm_start": [1]}
    found = problems(spec(search, objective=[{"metric": "val_accuracy"}, {"metric": "num_params",
                                                                          "goal": "minimize"}]))
    assert "search.warm_start" in found
    assert "pbt ranks members by one objective" in found["objective"]

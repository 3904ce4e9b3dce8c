"""Conditional hparams: `when` switches an hparam on only where its parents take the listed values."""

from __future__ import annotations

import pytest

from sweeper import SpecError, make_strategy, parse_spec

OPTIMIZER = {"type": "discrete", "values": ["adam", "sgd"]}


def sweep(hparams: dict, **search) -> dict:
    return {"name": "c", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
            "hparams": hparams, "search": {"strategy": "grid", **search}}


def problems(spec: dict) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    return str(caught.value)


def test_momentum_exists_only_in_sgd_trials():
    strategy = make_strategy(parse_spec(sweep({
        "optimizer": OPTIMIZER,
        "momentum": {"type": "discrete", "values": [0.0, 0.9], "when": {"optimizer": "sgd"}},
    })))

    configs = [strategy.config_at(k) for k in range(strategy.total)]

    assert configs == [{"optimizer": "adam"},
                       {"optimizer": "sgd", "momentum": 0.0}, {"optimizer": "sgd", "momentum": 0.9}]


def test_a_condition_may_list_several_values_and_chain_through_another_conditional_hparam():
    strategy = make_strategy(parse_spec(sweep({
        "optimizer": {"type": "discrete", "values": ["adam", "sgd", "rmsprop"]},
        "momentum": {"type": "discrete", "values": [0.0, 0.9], "when": {"optimizer": ["sgd", "rmsprop"]}},
        "weight_decay": {"type": "discrete", "values": [0.0, 0.01], "when": {"momentum": 0.9}},
    })))

    configs = [strategy.config_at(k) for k in range(strategy.total)]

    assert {"optimizer": "adam"} in configs
    assert {"optimizer": "rmsprop", "momentum": 0.0} in configs
    assert {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 0.01} in configs
    # adam: 1, sgd and rmsprop: momentum 0.0 (1) or 0.9 with weight_decay either way (2).
    assert len(configs) == len({tuple(sorted(c.items())) for c in configs}) == 1 + 2 * 3
    assert all("weight_decay" not in c for c in configs if c.get("momentum") != 0.9)


def test_the_schedule_parameters_of_the_chosen_schedule_only():
    strategy = make_strategy(parse_spec(sweep({
        "lr_schedule": {"type": "discrete", "values": ["constant", "cosine"]},
        "warmup_epochs": {"type": "int_interval", "min": 0, "max": 2, "when": {"lr_schedule": "cosine"}},
    }, grid_points=3)))

    assert [strategy.config_at(k) for k in range(strategy.total)] == [
        {"lr_schedule": "constant"},
        {"lr_schedule": "cosine", "warmup_epochs": 0}, {"lr_schedule": "cosine", "warmup_epochs": 1},
        {"lr_schedule": "cosine", "warmup_epochs": 2}]


def test_a_fixed_value_can_be_conditional_too():
    strategy = make_strategy(parse_spec(sweep({
        "optimizer": OPTIMIZER,
        "momentum": {"type": "fixed", "value": 0.9, "when": {"optimizer": "sgd"}},
    })))

    assert [strategy.config_at(k) for k in range(strategy.total)] == [
        {"optimizer": "adam"}, {"optimizer": "sgd", "momentum": 0.9}]


def test_random_search_over_intervals_drops_inactive_hparams():
    strategy = make_strategy(parse_spec({**sweep({
        "optimizer": OPTIMIZER,
        "momentum": {"type": "real_interval", "min": 0.5, "max": 0.99, "when": {"optimizer": "sgd"}},
    }), "search": {"strategy": "random", "max_trials": 40, "seed": 1}}))

    configs = [strategy.config_at(k) for k in range(strategy.total)]

    assert {c["optimizer"] for c in configs} == {"adam", "sgd"}
    assert all(("momentum" in c) == (c["optimizer"] == "sgd") for c in configs)
    assert all(0.5 <= c["momentum"] <= 0.99 for c in configs if "momentum" in c)


@pytest.mark.parametrize("when, rule", [
    ({"optimiser": "sgd"}, "hparams.momentum.when.optimiser: names no hparam of this sweep; hparams: optimizer, "
                           "momentum, units"),
    ({"units": 16}, "hparams.momentum.when.units: a condition can only name a discrete or fixed hparam, "
                    "but units is a int_interval"),
    ({"optimizer": "lbfgs"}, "hparams.momentum.when.optimizer: optimizer never takes 'lbfgs'; "
                             "its values are ['adam', 'sgd']"),
    ({"momentum": 0.9}, "hparams.momentum.when.momentum: momentum cannot depend on itself"),
    ({"optimizer": []}, "hparams.momentum.when.optimizer: List should have at least 1 item"),
])
def test_a_broken_condition_is_refused_with_its_path_and_rule(when, rule):
    spec = sweep({"optimizer": OPTIMIZER,
                  "momentum": {"type": "discrete", "values": [0.0, 0.9], "when": when},
                  "units": {"type": "int_interval", "min": 16, "max": 64}})

    assert rule in problems(spec)


def test_conditions_that_form_a_cycle_are_refused():
    spec = sweep({"a": {"type": "discrete", "values": [1, 2], "when": {"b": 1}},
                  "b": {"type": "discrete", "values": [1, 2], "when": {"a": 1}}})

    assert "hparams.a.when: conditions form a cycle: a -> b -> a" in problems(spec)


def test_too_many_branches_are_refused_before_anything_is_enumerated():
    many = {f"p{i}": {"type": "discrete", "values": list(range(10))} for i in range(6)}
    child = {"type": "discrete", "values": [1, 2], "when": {name: 0 for name in many}}

    assert "combinations of values; at most 100000 are allowed" in problems(sweep({**many, "child": child}))

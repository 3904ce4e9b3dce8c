"""Schedule hparams are checked against their ranges at spec time, without TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from sweeper import Discrete, Fixed, IntInterval, RealInterval
from sweeper._schedule_params import PARAMS, SCHEDULES, check_schedule_hparams

KNOWN = ", ".join(SCHEDULES)


def test_a_sensible_space_has_no_problems() -> None:
    space = {
        "lr_schedule": Discrete(values=["cosine", "one_cycle", "reduce_on_plateau", "step"]),
        "learning_rate": RealInterval(min=1e-4, max=1e-1, log=True),
        "warmup_epochs": IntInterval(min=0, max=3),
        "lr_min_factor": RealInterval(min=0.0, max=1.0),
        "lr_decay_factor": Fixed(value=1.0),
        "lr_boundaries": Discrete(values=["3,6", "2"]),
        "one_cycle_pct": Discrete(values=[0.25, 0.3]),
        "plateau_patience": IntInterval(min=0, max=5),
        "restart_epochs": Fixed(value=2),
        "units": IntInterval(min=-5, max=5),
    }

    assert check_schedule_hparams(space) == []


def test_every_schedule_reads_only_declared_hparams() -> None:
    assert {param for params in SCHEDULES.values() for param in params} <= set(PARAMS)


def test_a_fixed_unknown_schedule_is_named_with_the_known_ones() -> None:
    assert check_schedule_hparams({"lr_schedule": Fixed(value="linear")}) == [
        (("hparams", "lr_schedule"), f"unknown lr_schedule 'linear'; known schedules: {KNOWN}")]


def test_each_unknown_discrete_schedule_is_a_problem() -> None:
    problems = check_schedule_hparams({"lr_schedule": Discrete(values=["cosine", "cyclic", "warm"])})

    assert problems == [(("hparams", "lr_schedule"), f"unknown lr_schedule 'cyclic'; known schedules: {KNOWN}"),
                        (("hparams", "lr_schedule"), f"unknown lr_schedule 'warm'; known schedules: {KNOWN}")]


@pytest.mark.parametrize("domain", [Fixed(value=3), Discrete(values=[True, False]),
                                    RealInterval(min=0.0, max=1.0)])
def test_a_schedule_that_is_not_a_name_is_a_problem(domain: Any) -> None:
    problems = check_schedule_hparams({"lr_schedule": domain})

    assert problems
    assert all(path == ("hparams", "lr_schedule") and KNOWN in rule for path, rule in problems)


@pytest.mark.parametrize(("name", "allowed", "refused", "rule"), [
    ("learning_rate", [1e-6, 3], [0.0, -0.1], "must be > 0"),
    ("lr_decay_factor", [0.01, 1.0], [0.0, 1.5], "must be in (0, 1]"),
    ("lr_decay_rate", [0.5, 1], [0, 2.0], "must be in (0, 1]"),
    ("lr_step_epochs", [1, 10], [0, 2.5], "must be an integer >= 1"),
    ("warmup_epochs", [0, 4], [-1, 1.5], "must be an integer >= 0"),
    ("lr_min_factor", [0.0, 1.0], [-0.1, 1.01], "must be in [0, 1]"),
    ("restart_epochs", [1, 3], [0, 1.5], "must be an integer >= 1"),
    ("restart_t_mul", [1.0, 2.0], [0.5, 0.0], "must be >= 1"),
    ("restart_m_mul", [0.5, 1.0], [0.0, 1.5], "must be in (0, 1]"),
    ("lr_power", [0.5, 2], [0.0, -1.0], "must be > 0"),
    ("one_cycle_pct", [0.1, 0.9], [0.0, 1.0], "must be in (0, 1)"),
    ("one_cycle_div", [1.0, 25.0], [0.5, 0.0], "must be >= 1"),
    ("one_cycle_final_div", [1.0, 1e4], [0.9, -1.0], "must be >= 1"),
    ("plateau_factor", [0.1, 0.9], [0.0, 1.0], "must be in (0, 1)"),
    ("plateau_patience", [0, 10], [-1, 2.0], "must be an integer >= 0"),
])
def test_fixed_and_discrete_values_must_lie_in_the_range(name: str, allowed: list[Any], refused: list[Any],
                                                         rule: str) -> None:
    assert check_schedule_hparams({name: Fixed(value=allowed[0]), "other": Fixed(value=refused[0])}) == []
    assert check_schedule_hparams({name: Discrete(values=allowed)}) == []

    assert check_schedule_hparams({name: Fixed(value=refused[0])}) == [
        (("hparams", name), f"{name} {rule}, but got {refused[0]!r}")]
    assert [problem for _, problem in check_schedule_hparams({name: Discrete(values=[*allowed, *refused])})] == [
        f"{name} {rule}, but got {value!r}" for value in refused]


@pytest.mark.parametrize(("name", "domain", "rule"), [
    ("lr_decay_factor", RealInterval(min=0.5, max=1.5), "lr_decay_factor must be in (0, 1], but the interval's max is 1.5"),
    ("lr_min_factor", RealInterval(min=-0.5, max=0.5), "lr_min_factor must be in [0, 1], but the interval's min is -0.5"),
    ("one_cycle_pct", RealInterval(min=0.0, max=0.5), "one_cycle_pct must be in (0, 1), but the interval's min is 0.0"),
    ("plateau_patience", IntInterval(min=-1, max=3), "plateau_patience must be an integer >= 0, but the interval's min is -1"),
    ("one_cycle_div", IntInterval(min=0, max=30), "one_cycle_div must be >= 1, but the interval's min is 0"),
])
def test_interval_bounds_must_lie_in_the_range(name: str, domain: Any, rule: str) -> None:
    assert check_schedule_hparams({name: domain}) == [(("hparams", name), rule)]


def test_both_bounds_out_of_range_are_two_problems() -> None:
    problems = check_schedule_hparams({"restart_m_mul": RealInterval(min=-1.0, max=2.0)})

    assert [rule.split(", but ")[1] for _, rule in problems] == ["the interval's min is -1.0", "the interval's max is 2.0"]


def test_whole_number_hparams_cannot_be_searched_over_reals() -> None:
    assert check_schedule_hparams({"warmup_epochs": RealInterval(min=0.0, max=3.0)}) == [
        (("hparams", "warmup_epochs"),
         "warmup_epochs must be an integer >= 0: search it with an int_interval, not a real_interval")]


@pytest.mark.parametrize("value", ["fast", True])
def test_a_number_hparam_refuses_strings_and_bools(value: Any) -> None:
    assert check_schedule_hparams({"lr_power": Fixed(value=value)}) == [
        (("hparams", "lr_power"), f"lr_power must be > 0, but got {value!r}")]


@pytest.mark.parametrize(("value", "rule"), [
    ("6,3", "lr_boundaries must list increasing epochs >= 1, but got '6,3'"),
    ("0,3", "lr_boundaries must list increasing epochs >= 1, but got '0,3'"),
    ("3;6", "lr_boundaries must be a comma-separated list of whole epochs like \"3,6\", but got '3;6'"),
    (2.5, "lr_boundaries must be a comma-separated list of epochs like \"3,6\", but got 2.5"),
])
def test_boundaries_must_be_increasing_whole_epochs(value: Any, rule: str) -> None:
    assert check_schedule_hparams({"lr_boundaries": Fixed(value=value)}) == [(("hparams", "lr_boundaries"), rule)]


def test_boundaries_cannot_be_an_interval() -> None:
    [(_, rule)] = check_schedule_hparams({"lr_boundaries": IntInterval(min=1, max=4)})

    assert rule.startswith("lr_boundaries must be a comma-separated list") and rule.endswith("not a int_interval")


def test_hparams_no_schedule_reads_are_left_alone() -> None:
    assert check_schedule_hparams({"dropout": RealInterval(min=-1.0, max=2.0), "optimizer": Fixed(value="x")}) == []


def test_checking_does_not_load_tensorflow_or_keras() -> None:
    code = "import sys, sweeper._schedule_params; print(sorted({'tensorflow', 'keras'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"

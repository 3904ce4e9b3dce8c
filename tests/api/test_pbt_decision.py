"""The PBT decision as pure functions: quartiles, the donor, explore, and their seeding."""

from __future__ import annotations

import random

import pytest

from api.search import pbt
from sweeper import Discrete, IntInterval, RealInterval

SPACE = {"learning_rate": RealInterval(min=1e-4, max=1e-1, log=True), "dropout": RealInterval(min=0.0, max=0.5),
         "units": Discrete(values=[16, 32, 64]), "depth": IntInterval(min=1, max=8)}


@pytest.mark.parametrize("members, quarter", [(1, 0), (2, 1), (3, 1), (4, 1), (5, 2), (8, 2), (9, 3)])
def test_the_bottom_and_top_quarters_are_ceil_n_over_4_and_never_overlap(members: int, quarter: int):
    values = {number: float(number) for number in range(1, members + 1)}
    bottom, top = pbt.quartiles(values, "maximize")
    assert len(bottom) == len(top) == quarter
    assert not set(bottom) & set(top)
    assert top == sorted(values, reverse=True)[:quarter]


def test_a_member_without_a_finite_value_ranks_last_whatever_the_goal():
    for goal in ("maximize", "minimize"):
        bottom, top = pbt.quartiles({1: 0.5, 2: float("nan"), 3: None, 4: 0.7, 5: 0.6}, goal)
        assert sorted(bottom) == [2, 3]
        assert top == ([4, 5] if goal == "maximize" else [1, 5])


def test_a_minimized_objective_puts_the_largest_value_at_the_bottom():
    bottom, top = pbt.quartiles({1: 3.0, 2: 1.0, 3: 2.0, 4: 4.0}, "minimize")
    assert bottom == [4] and top == [2]


def test_only_a_bottom_quarter_member_exploits_and_its_donor_is_in_the_top_quarter():
    values = {number: float(number) for number in range(1, 9)}
    hparams = {number: {"learning_rate": 0.01, "dropout": 0.2, "units": 32, "depth": 4} for number in values}
    for member in values:
        decision = pbt.decide(member, 3, values, "maximize", hparams, SPACE, ["learning_rate"], seed=0)
        if member in (1, 2):
            assert decision is not None and decision.donor in (7, 8) and decision.compared == 8
        else:
            assert decision is None


def test_the_same_member_and_epoch_and_seed_decide_the_same_and_another_seed_may_not():
    values = {number: float(number) for number in range(1, 9)}
    hparams = {number: {"learning_rate": 0.01 * number, "dropout": 0.2, "units": 32, "depth": 4} for number in values}
    decide = lambda seed, epoch: pbt.decide(1, epoch, values, "maximize", hparams, SPACE,  # noqa: E731
                                            ["learning_rate", "dropout"], seed)
    assert decide(0, 3) == decide(0, 3)
    assert len({str(decide(seed, epoch)) for seed in range(5) for epoch in (1, 3, 5)}) > 1


def test_explore_perturbs_intervals_by_a_fifth_clipped_and_moves_discrete_values_to_a_neighbour():
    start = {"learning_rate": 0.01, "dropout": 0.5, "units": 16, "depth": 8}
    seen: dict[str, set] = {name: set() for name in start}
    for seed in range(200):
        for name, value in start.items():
            seen[name].add(round(pbt.perturb(SPACE[name], value, random.Random(seed)), 9))
    assert seen["learning_rate"] == {0.008, 0.012}
    assert seen["dropout"] == {0.4, 0.5}, "0.5 * 1.2 is clipped to the domain's max"
    assert seen["units"] == {16, 32}, "the first value's only neighbour, or itself at the edge"
    assert seen["depth"] == {6, 8}, "8 * 0.8 rounds to 6; 8 * 1.2 is clipped to 8"


def test_explore_resamples_about_a_quarter_of_the_time_and_leaves_immutable_hparams_alone():
    start = {"learning_rate": 0.01, "dropout": 0.2, "units": 32, "depth": 4}
    resampled = 0
    for seed in range(2000):
        explored = pbt.explore(start, SPACE, ["learning_rate"], random.Random(seed))
        assert {name: explored[name] for name in ("dropout", "units", "depth")} == \
            {"dropout": 0.2, "units": 32, "depth": 4}
        assert SPACE["learning_rate"].contains(explored["learning_rate"])
        resampled += round(explored["learning_rate"], 9) not in (0.008, 0.012)
    assert 0.2 < resampled / 2000 < 0.3


def test_boundaries_are_every_interval_before_the_last_epoch():
    assert pbt.boundaries(3, 10) == [2, 5, 8]
    assert pbt.boundaries(3, 9) == [2, 5]
    assert [epoch for epoch in range(9) if pbt.is_boundary(epoch, 3, 9)] == [2, 5]

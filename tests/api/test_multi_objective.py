"""Multi-objective sweeps: `objective` as a list, e.g. val_accuracy up and num_params down. The samplers search
for the trade-off; `GET /sweeps/{id}` has the Pareto front instead of a single best trial."""

from __future__ import annotations

from typing import Any

import pytest
from api_testing import API, Worker, create_sweep, get_sweep
from fastapi.testclient import TestClient
from test_adaptive_search import STRATEGIES

from api.search.pareto import pareto_front, pareto_ranks

SMALL_AND_GOOD = [{"metric": "val_accuracy", "goal": "maximize"}, {"metric": "num_params", "goal": "minimize"}]


def two_objective_spec(strategy: str, max_trials: int = 12, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "trade-off", "model": "mlp", "dataset": "digits", "objective": SMALL_AND_GOOD,
        "hparams": {"units": {"type": "int_interval", "min": 8, "max": 512, "log": True},
                    "dropout": {"type": "real_interval", "min": 0.0, "max": 0.5}},
        "search": {"strategy": strategy, "max_trials": max_trials, "seed": 0},
    }
    data.update(overrides)
    return data


def trade_off(hparams: dict[str, Any]) -> dict[str, float]:
    """More units: more accurate and larger; dropout costs accuracy and saves nothing (dominated)."""
    units, dropout = hparams["units"], hparams["dropout"]
    return {"val_accuracy": 1 - 1 / units - dropout / 10, "num_params": float(units * 100), "loss": 1.0}


# fmt: off
RANKS = [
    # (val_accuracy, num_params), rank: maximize the first, minimize the second
    ((0.90, 1000.0), 0),
    ((0.95, 5000.0), 0),
    ((0.80, 1000.0), 1),  # beaten by the first in accuracy at the same size
    ((0.90, 1000.0), 0),  # the first again: equal points do not beat each other
    ((0.85, 6000.0), 1),  # beaten by the first and the second, not by the third (less accurate)
    ((0.99, 9000.0), 0),
    ((0.70, 7000.0), 2),  # beaten by the third and the fifth too
]
# fmt: on


def test_pareto_ranks_match_the_hand_worked_table():
    points = [list(point) for point, _ in RANKS]

    assert pareto_ranks(points, [True, False]) == [rank for _, rank in RANKS]
    assert pareto_front(points, [True, False]) == [0, 1, 3, 5]
    assert pareto_ranks([], [True, False]) == [] and pareto_front([], [True]) == []


GP = STRATEGIES[-1]  # with its skip where PyTorch is missing


@pytest.mark.parametrize("strategy", ["nsga2", "tpe", GP, "random"])  # cmaes optimizes one objective (refused below)
def test_a_two_objective_sweep_reports_its_pareto_front_instead_of_a_best_trial(client: TestClient, strategy):
    sweep = create_sweep(client, two_objective_spec(strategy))
    worker = Worker(client, "w")
    reported: dict[int, dict[str, float]] = {}
    for _ in range(12):
        assignment = worker.claim()
        assert assignment is not None
        metrics = trade_off(assignment["hparams"])
        reported[assignment["trial_id"]] = metrics
        assert worker.complete(assignment["trial_id"], **metrics).status_code == 200

    read = get_sweep(client, sweep["id"])

    assert read["status"] == "completed" and read["best_trial"] is None
    ids = sorted(reported)
    expected = [ids[position] for position in pareto_front(
        [[reported[i]["val_accuracy"], reported[i]["num_params"]] for i in ids], [True, False])]
    assert read["pareto_front"] == expected and expected
    assert read["spec"]["objectives"] == [{**objective, "epoch": "last"} for objective in SMALL_AND_GOOD]
    assert read["spec"]["objective"] == {**SMALL_AND_GOOD[0], "epoch": "last"}  # the first, for what reads one
    listed = client.get(f"{API}/sweeps").json()["data"][0]
    assert listed["pareto_front"] == expected


def test_a_single_objective_sweep_has_no_pareto_front(client: TestClient):
    sweep = create_sweep(client, two_objective_spec("tpe", objective={"metric": "val_accuracy"}))
    assert get_sweep(client, sweep["id"])["pareto_front"] is None


@pytest.mark.parametrize(("overrides", "loc", "message"), [
    ({"search": {"strategy": "cmaes", "max_trials": 5}}, ["search", "strategy"],
     "cmaes optimizes one objective, and this sweep has 2 (val_accuracy, num_params); use nsga2 or tpe"),
    ({"stopping": {"rule": "asha"}}, ["stopping", "rule"],
     "stopping rules judge one objective, and this sweep has 2 (val_accuracy, num_params); drop stopping, or keep "
     "one objective"),
    ({"objective": [{"metric": "val_accuracy"}, {"metric": "val_acc", "goal": "minimize"}]}, ["objective", 1, "metric"],
     "'val_acc' is not a metric the trial logs"),
    ({"objective": [{"metric": "val_accuracy"}, {"metric": "num_params", "goal": "down"}]}, ["objective", 1, "goal"],
     "Input should be 'maximize' or 'minimize'"),
    ({"objective": [{"metric": "loss", "goal": "minimize"}, {"metric": "loss", "goal": "minimize"}]}, ["objective"],
     "each metric may be an objective once, but got loss, loss"),
])
def test_a_bad_list_of_objectives_is_a_422_naming_the_entry(client: TestClient, overrides: dict[str, Any],
                                                            loc: list[Any], message: str):
    response = client.post(f"{API}/sweeps", json=two_objective_spec("nsga2", **overrides))

    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", *loc] and error["msg"].startswith(message)

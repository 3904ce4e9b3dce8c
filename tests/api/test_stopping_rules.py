"""Stopping rules over REST: asha, hyperband and median judge every epoch report, against rung tables worked out
by hand here; a pruned trial ends with its reason, takes its worker's last calls, and counts as a result; a
decision once answered is the answer for good, after a restart too.

Values are val_loss (minimized), reported by test doubles of workers in the order the tables give.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from api_testing import API, Worker, create_sweep, get_sweep, get_trial, without_times
from fastapi.testclient import TestClient


def stopping_spec(rule: str, *, max_trials: int = 12, epochs: int = 9, min_epochs: int = 1,
                  reduction_factor: int = 3, strategy: str = "random") -> dict[str, Any]:
    return {
        "name": f"{rule}-sweep", "model": "mlp", "dataset": "digits",
        "objective": {"metric": "val_loss", "goal": "minimize"},
        "hparams": {"learning_rate": {"type": "real_interval", "min": 1e-4, "max": 1e-1, "log": True}},
        "search": {"strategy": strategy, "max_trials": max_trials, "seed": 0},
        "stopping": {"rule": rule, "min_epochs": min_epochs, "reduction_factor": reduction_factor},
        "train": {"epochs": epochs},
    }


class Fleet:
    """Workers named by letter, each holding one trial, reporting as the test says."""

    def __init__(self, client: TestClient):
        self.client = client
        self.workers: dict[str, Worker] = {}
        self.trials: dict[str, int] = {}

    def start(self, name: str) -> int:
        self.workers[name] = Worker(self.client, name)
        self.trials[name] = self.workers[name].claim_id()
        return self.trials[name]

    def report(self, name: str, epoch: int, value: float) -> str:
        response = self.workers[name].report(self.trials[name], epoch, val_loss=value, loss=value)
        assert response.status_code == 200, response.text
        action: str = response.json()["action"]
        return action

    def decision(self, name: str, epoch: int) -> dict[str, Any]:
        history = get_trial(self.client, self.trials[name])["history"]
        [entry] = [entry for entry in history if entry["epoch"] == epoch]
        decision: dict[str, Any] = entry["decision"]
        return decision


# ASHA, reduction factor 3, first rung after 1 epoch (rungs at 1, 3, 9 epochs). At each rung a trial goes on if
# it is among the best len(reached) // 3 (at least 1) of the trials that reached the rung so far, itself included.
# fmt: off
ASHA_TABLE = [
    # trial, epoch, val_loss, action,    rung, cutoff, compared with
    ("a",    0,     1.00,     "continue", 0,   1.00,   0),  # alone at rung 0: goes on
    ("b",    0,     2.00,     "prune",    0,   1.00,   1),  # [1, 2]: keeps 1
    ("c",    0,     0.50,     "continue", 0,   0.50,   2),  # [.5, 1, 2]: keeps 1, c is it
    ("d",    0,     0.70,     "prune",    0,   0.50,   3),
    ("e",    0,     0.60,     "prune",    0,   0.50,   4),
    ("f",    0,     0.55,     "continue", 0,   0.55,   5),  # six reached rung 0: the best 2 go on
    ("a",    1,     0.90,     "continue", 0,   None,   None),  # 2 epochs: between rungs, nothing compared anew
    ("a",    2,     0.80,     "continue", 1,   0.80,   0),  # 3 epochs: rung 1, alone there
    ("c",    1,     0.88,     "continue", 0,   None,   None),
    ("c",    2,     0.85,     "prune",    1,   0.80,   1),
]
# fmt: on


def test_asha_stops_each_trial_as_the_hand_computed_rung_table_says(client: TestClient):
    create_sweep(client, stopping_spec("asha"))
    fleet = Fleet(client)
    for name in "abcdef":
        fleet.start(name)

    for name, epoch, value, action, rung, cutoff, compared_with in ASHA_TABLE:
        assert fleet.report(name, epoch, value) == action, (name, epoch)
        decision = fleet.decision(name, epoch)
        assert decision["action"] == action and decision["rule"] == "asha" and decision["rung"] == rung
        if cutoff is not None:
            assert decision["cutoff"] == pytest.approx(cutoff) and decision["compared_with"] == compared_with

    pruned = get_trial(client, fleet.trials["b"])
    assert pruned["state"] == "pruned" and pruned["pruned_at_epoch"] == 0
    assert pruned["prune_reason"] == ("val_loss 2 at rung 0 (1 epochs) is not in the top 1/3 of the 2 trials that "
                                      "reached it (cutoff 1)")
    assert get_trial(client, fleet.trials["c"])["pruned_at_epoch"] == 2
    assert get_trial(client, fleet.trials["a"])["state"] == "running"


# Median, decisions from epoch 2 on, once 3 trials have completed: a trial stops when its best val_loss so far is
# worse than the median of the completed trials' val_loss at the same epoch.
COMPLETED_CURVES = {"t1": [1.0, 0.8, 0.6], "t2": [1.2, 1.0, 0.9], "t3": [0.9, 0.7, 0.5]}  # median at epoch 2: 0.8


@pytest.mark.parametrize("rule", ["asha", "hyperband", "median"])
def test_no_rule_prunes_a_trial_at_its_last_epoch(client: TestClient, rule: str):
    # With 3 epochs, asha's second rung falls on the last epoch: stopping a trial there would save nothing and
    # turn a trial that trained every epoch into a pruned one, out of the results.
    create_sweep(client, stopping_spec(rule, max_trials=5, epochs=3, min_epochs=1))
    fleet = Fleet(client)
    curves = {"t1": [1.0, 0.9, 0.5], "t2": [1.0, 0.9, 0.5], "t3": [1.0, 0.9, 0.5], "t4": [0.9, 0.8, 0.6],
              "t5": [0.95, 0.85, 0.9]}
    answers = {}
    for name, curve in curves.items():
        fleet.start(name)
        answers[name] = [fleet.report(name, epoch, value) for epoch, value in enumerate(curve)
                         if get_trial(client, fleet.trials[name])["state"] == "running"]
        fleet.workers[name].complete(fleet.trials[name], val_loss=curve[-1])

    assert all(answer[-1:] == ["continue"] for answer in answers.values() if len(answer) == 3), answers
    last = fleet.decision("t4", 2)
    assert last["action"] == "continue" and last["last_epoch"] is True
    assert get_trial(client, fleet.trials["t4"])["state"] == "completed"


def test_median_stops_a_trial_worse_than_the_median_of_the_completed_ones(client: TestClient):
    create_sweep(client, stopping_spec("median", epochs=3, min_epochs=2))
    fleet = Fleet(client)
    fleet.start("early")
    for name, curve in COMPLETED_CURVES.items():
        fleet.start(name)
        for epoch, value in enumerate(curve):
            assert fleet.report(name, epoch, value) == "continue"
        assert fleet.workers[name].complete(fleet.trials[name], val_loss=curve[-1]).status_code == 200
    fleet.start("good")
    fleet.start("bad")

    assert fleet.report("bad", 0, 5.0) == "continue"  # epoch 1: before any decision
    assert fleet.report("good", 0, 0.95) == "continue"
    assert fleet.report("good", 1, 0.79) == "continue"  # best 0.79, the median 0.8
    assert fleet.report("bad", 1, 1.1) == "prune"  # best 1.1
    decision = fleet.decision("bad", 1)
    assert decision["cutoff"] == pytest.approx(0.8) and decision["value"] == pytest.approx(1.1)
    assert decision["compared_with"] == 3
    assert get_trial(client, fleet.trials["bad"])["prune_reason"] == (
        "best val_loss so far 1.1 is above the median 0.8 of the 3 completed trials at epoch 2")


def test_median_waits_for_three_completed_trials(client: TestClient):
    create_sweep(client, stopping_spec("median", epochs=3, min_epochs=1))
    fleet = Fleet(client)
    for name, curve in list(COMPLETED_CURVES.items())[:2]:
        fleet.start(name)
        for epoch, value in enumerate(curve):
            fleet.report(name, epoch, value)
        fleet.workers[name].complete(fleet.trials[name], val_loss=curve[-1])
    fleet.start("bad")

    assert [fleet.report("bad", epoch, 9.0) for epoch in range(3)] == ["continue"] * 3


def test_hyperband_compares_a_trial_within_its_bracket_at_its_brackets_rungs(client: TestClient):
    create_sweep(client, stopping_spec("hyperband", max_trials=24, epochs=9))
    fleet = Fleet(client)
    names = [f"t{number}" for number in range(24)]
    for name in names:
        fleet.start(name)
    decisions: list[dict[str, Any]] = []
    for epoch in range(9):
        for number, name in enumerate(names):
            if get_trial(client, fleet.trials[name])["state"] != "running":
                continue
            fleet.report(name, epoch, 1.0 + ((number * 7) % 24) / 10 - epoch / 20)
            decisions.append(fleet.decision(name, epoch) | {"trial": name})

    judged = [decision for decision in decisions if "bracket" in decision]
    assert {decision["bracket"] for decision in judged} <= {0, 1, 2}  # 1 to 9 epochs by 3: three brackets
    assert len({decision["bracket"] for decision in judged}) >= 2
    for decision in judged:
        # Bracket b's rungs are at 3^(b + rung) epochs; a trial is judged only when it reaches one.
        assert decision["rung_epochs"] == 3 ** (decision["bracket"] + decision["rung"])
    bracket_of = {decision["trial"]: decision["bracket"] for decision in judged}
    for decision in judged:
        peers = [name for name, bracket in bracket_of.items() if bracket == decision["bracket"]]
        assert decision["compared_with"] < len(peers)
    assert any(decision["action"] == "prune" for decision in judged)


def test_a_pruned_trial_takes_its_workers_last_calls_and_keeps_the_metrics_it_reached(client: TestClient):
    create_sweep(client, stopping_spec("asha", max_trials=2))
    fleet = Fleet(client)
    fleet.start("a")
    fleet.start("b")
    fleet.report("a", 0, 1.0)
    assert fleet.report("b", 0, 2.0) == "prune"
    worker, trial_id = fleet.workers["b"], fleet.trials["b"]

    assert worker.heartbeat(trial_id).json()["action"] == "prune"  # before it stops: told again
    assert worker.report(trial_id, 0, val_loss=2.0).json()["action"] == "prune"  # the lost answer, asked again
    completed = worker.complete(trial_id, val_loss=2.0, loss=2.0)

    assert completed.status_code == 200 and completed.json()["state"] == "pruned"
    assert worker.complete(trial_id, val_loss=2.0, loss=2.0).status_code == 200  # a retry is a repeat
    assert worker.heartbeat(trial_id).status_code == 409  # its lease is over
    trial = get_trial(client, trial_id)
    assert trial["metrics"] == {"val_loss": 2.0, "loss": 2.0} and trial["lease_expires_at"] is None
    assert get_sweep(client, 1)["trial_counts"]["pruned"] == 1


def test_a_sweep_whose_last_trial_is_pruned_completes(client: TestClient):
    create_sweep(client, stopping_spec("asha", max_trials=2))
    fleet = Fleet(client)
    fleet.start("a")
    fleet.start("b")
    fleet.report("a", 0, 1.0)
    for epoch in range(1, 9):
        fleet.report("a", epoch, 1.0)
    fleet.workers["a"].complete(fleet.trials["a"], val_loss=1.0)

    assert fleet.report("b", 0, 2.0) == "prune"

    assert get_sweep(client, 1)["status"] == "completed"


def test_a_trial_holds_the_metrics_of_the_epoch_that_pruned_it_before_its_worker_completes(client: TestClient):
    # The sweep completes with the prune of its last trial: what the sweep shows then must hold that trial's
    # metrics, not wait for its worker's last call (which a server restart can hold up).
    create_sweep(client, stopping_spec("asha", max_trials=2))
    fleet = Fleet(client)
    fleet.start("a")
    fleet.start("b")
    for epoch in range(9):
        fleet.report("a", epoch, 1.0)
    fleet.workers["a"].complete(fleet.trials["a"], val_loss=1.0)

    assert fleet.report("b", 0, 2.0) == "prune"

    assert get_sweep(client, 1)["status"] == "completed"
    assert get_trial(client, fleet.trials["b"])["metrics"] == {"val_loss": 2.0, "loss": 2.0}


def test_an_answered_epoch_keeps_its_answer_after_a_restart(settings, make_client: Callable[..., TestClient]):
    client = make_client(settings)
    create_sweep(client, stopping_spec("asha"))
    fleet = Fleet(client)
    fleet.start("slow")
    assert fleet.report("slow", 0, 1.0) == "continue"  # alone at rung 0
    for name, value in (("x", 0.2), ("y", 0.3)):
        fleet.start(name)
        fleet.report(name, 0, value)
    client.__exit__(None, None, None)

    restarted = make_client(settings)
    fleet.client = restarted
    for worker in fleet.workers.values():
        worker.client = restarted
    fleet.start("twin")

    # Judged now, 1.0 ranks third of four at rung 0: the twin is stopped; the epoch answered before is not.
    assert fleet.report("twin", 0, 1.0) == "prune"
    assert fleet.report("slow", 0, 1.0) == "continue"  # resumed from a checkpoint, it reports epoch 0 again
    assert fleet.decision("slow", 0)["compared_with"] == 0


@pytest.mark.parametrize(("stopping", "field", "message"), [
    ({"rule": "asha", "reduction_factor": 1}, "reduction_factor", "must be >= 2 and <= 100, but got 1"),
    ({"rule": "asha", "min_epochs": 12}, "min_epochs", "must be <= train.epochs (9), but got 12"),
    ({"rule": "sometimes"}, "rule", "Input should be 'asha', 'hyperband', 'median' or 'none'"),
    ({"rule": "asha", "patience": 3}, "patience", "unknown field"),
])
def test_a_bad_stopping_rule_is_a_422_naming_the_field(client: TestClient, stopping: dict[str, Any], field: str,
                                                       message: str):
    spec = stopping_spec("asha")
    spec["stopping"] = stopping

    response = client.post(f"{API}/sweeps", json=spec)

    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "stopping", field] and error["msg"].startswith(message)


def test_without_a_stopping_rule_no_decision_is_stored(client: TestClient):
    spec = stopping_spec("none")
    create_sweep(client, spec)
    fleet = Fleet(client)
    fleet.start("a")

    assert fleet.report("a", 0, 1.0) == "continue"
    assert without_times(get_trial(client, fleet.trials["a"])["history"]) == [{"epoch": 0, "metrics": {"val_loss": 1.0, "loss": 1.0}}]


def test_a_running_trial_whose_sweeps_model_is_gone_still_reports_its_epochs(
        settings, make_client: Callable[..., TestClient]):
    # As after a restart without the plugin that registered the model: the worker has it, the server not.
    from sqlalchemy import update

    from api.models import SweepRow

    client = make_client(settings)
    create_sweep(client, stopping_spec("none"))
    fleet = Fleet(client)
    fleet.start("a")
    context = client.app.state.context  # type: ignore[attr-defined]
    with context.sessions() as session, session.begin():
        stored = session.get(SweepRow, 1).spec
        session.execute(update(SweepRow).values(spec={**stored, "model": "plugin-model-gone"}))
    client.__exit__(None, None, None)
    restarted = make_client(settings)
    fleet.client = fleet.workers["a"].client = restarted

    assert fleet.report("a", 0, 1.0) == "continue"
    assert get_trial(restarted, fleet.trials["a"])["history"][0]["metrics"]["val_loss"] == 1.0


def test_a_fault_in_the_stopping_rule_keeps_the_epoch_and_the_trial_going(client: TestClient, monkeypatch):
    from api.search import decisions

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug in the rule")

    create_sweep(client, stopping_spec("asha"))
    fleet = Fleet(client)
    fleet.start("a")
    monkeypatch.setattr(decisions.Search, "decide", broken)

    assert fleet.report("a", 0, 1.0) == "continue"
    assert without_times(get_trial(client, fleet.trials["a"])["history"]) == [{"epoch": 0, "metrics": {"val_loss": 1.0, "loss": 1.0}}]
    monkeypatch.undo()
    assert fleet.report("a", 1, 0.9) == "continue"
    assert fleet.decision("a", 1)["action"] == "continue"

"""The worker protocol over REST: claim, heartbeat, metrics, complete and fail, leases and sweep completion."""

from __future__ import annotations

import time
from datetime import datetime
from collections.abc import Callable

import pytest
from api_testing import API, Worker, create_sweep, get_sweep, get_trial, grid_spec, random_spec, without_times
from fastapi.testclient import TestClient

from sweeper import TrainSettings, make_strategy, parse_spec


def test_claim_assigns_the_first_trial_with_everything_a_worker_needs(client: TestClient, settings):
    sweep = create_sweep(client, grid_spec(values=3))

    assignment = Worker(client, "w1").claim()

    assert assignment is not None
    assert assignment["sweep_id"] == sweep["id"]
    assert assignment["hparams"] == make_strategy(parse_spec(grid_spec(values=3))).config_at(0)
    assert assignment["model"] == "mlp" and assignment["dataset"] == "digits"
    assert assignment["objective"] == {"metric": "val_accuracy", "goal": "maximize", "epoch": "last"}
    assert TrainSettings.model_validate(assignment["train"]) == TrainSettings.model_validate(sweep["spec"]["train"])
    assert assignment["log_scaled"] == []
    assert assignment["number"] == 1
    assert assignment["logdir"] == str((settings.logdir / str(sweep["id"]) / "trial-0001").resolve())
    assert assignment["lease_expires_at"].endswith("Z")
    trial = get_trial(client, assignment["trial_id"])
    assert trial["state"] == "running" and trial["worker_id"] == "w1" and trial["attempts"] == 1
    assert trial["metrics"] == {} and trial["history"] == [] and trial["error"] is None
    assert trial["started_at"] is not None and trial["finished_at"] is None


def test_claim_with_no_sweeps_is_204_with_an_empty_body(client: TestClient):
    assert Worker(client, "w1").claim() is None


def test_claiming_again_hands_the_worker_its_own_trial_with_a_fresh_lease(client: TestClient):
    create_sweep(client, grid_spec(values=3))
    worker = Worker(client, "w1")

    first = worker.claim()
    again = worker.claim()

    assert first is not None and again is not None
    assert again["trial_id"] == first["trial_id"]
    assert again["lease_expires_at"] >= first["lease_expires_at"]
    assert get_trial(client, first["trial_id"])["attempts"] == 1


def test_different_workers_get_different_trials(client: TestClient):
    create_sweep(client, grid_spec(values=3))
    ids = {Worker(client, f"w{i}").claim()["trial_id"] for i in range(3)}  # type: ignore[index]
    assert len(ids) == 3


def test_full_flow_records_history_final_metrics_and_best_trial(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=3))
    worker = Worker(client, "w1")
    scores = {}
    for score in (0.7, 0.9, 0.8):
        trial_id = worker.claim()["trial_id"]  # type: ignore[index]
        for epoch in range(2):
            directive = worker.report(trial_id, epoch, loss=1.0 / (epoch + 1), val_accuracy=score - 0.1 + epoch * 0.1)
            assert directive.status_code == 200 and directive.json() == {"action": "continue"}
        assert worker.heartbeat(trial_id).json() == {"action": "continue"}
        done = worker.complete(trial_id, val_accuracy=score, loss=0.1)
        assert done.status_code == 200
        assert done.json()["state"] == "completed" and done.json()["metrics"] == {"val_accuracy": score, "loss": 0.1}
        scores[trial_id] = score

    best_id = max(scores, key=scores.__getitem__)
    trial = get_trial(client, best_id)
    assert [entry["epoch"] for entry in trial["history"]] == [0, 1]
    assert trial["history"][1]["metrics"] == {"loss": 0.5, "val_accuracy": pytest.approx(0.9)}
    assert trial["finished_at"] is not None and trial["lease_expires_at"] is None
    finished = get_sweep(client, sweep["id"])
    assert finished["status"] == "completed" and finished["finished_at"] is not None
    assert finished["trial_counts"]["completed"] == 3 and finished["trial_counts"]["running"] == 0
    assert finished["best_trial"]["id"] == best_id
    assert finished["best_trial"]["metrics"]["val_accuracy"] == 0.9
    trials = client.get(f"{API}/sweeps/{sweep['id']}/trials").json()
    assert trials["count"] == 3
    assert [t["index"] for t in trials["data"]] == [0, 1, 2]
    assert set(trials["data"][0]) >= {"id", "sweep_id", "state", "hparams", "metrics", "attempts", "worker_id", "error",
                                      "created_at", "started_at", "finished_at"}


def test_best_trial_follows_a_minimize_goal_and_ignores_trials_without_the_objective(client: TestClient):
    sweep = create_sweep(client, random_spec(max_trials=4))  # minimizes val_loss
    worker = Worker(client, "w1")
    reported = [{"val_loss": 0.5}, {"val_loss": 0.2}, {"accuracy": 1.0}, {"val_loss": 0.3}]
    ids = []
    for metrics in reported:
        trial_id = worker.claim()["trial_id"]  # type: ignore[index]
        worker.complete(trial_id, **metrics)
        ids.append(trial_id)
    assert get_sweep(client, sweep["id"])["best_trial"]["id"] == ids[1]


def test_best_trial_is_null_until_a_trial_completes(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=2))
    worker = Worker(client, "w1")
    trial_id = worker.claim()["trial_id"]  # type: ignore[index]
    worker.report(trial_id, 0, val_accuracy=0.99)
    assert get_sweep(client, sweep["id"])["best_trial"] is None


def test_reporting_an_epoch_again_overwrites_it(client: TestClient):
    create_sweep(client, grid_spec())
    worker = Worker(client, "w1")
    trial_id = worker.claim()["trial_id"]  # type: ignore[index]
    worker.report(trial_id, 1, loss=2.0)
    worker.report(trial_id, 0, loss=3.0)
    worker.report(trial_id, 1, loss=1.5, accuracy=0.5)

    history = get_trial(client, trial_id)["history"]
    assert without_times(history) == [{"epoch": 0, "metrics": {"loss": 3.0}},
                                      {"epoch": 1, "metrics": {"loss": 1.5, "accuracy": 0.5}}]
    # When each epoch was last reported: the page paces a resumed trial by its current attempt's epochs.
    first, again = (datetime.fromisoformat(entry["reported_at"]) for entry in history)
    assert first.tzinfo is not None and again >= first


def test_claim_from_another_worker_gets_409_and_changes_nothing(client: TestClient):
    create_sweep(client, grid_spec())
    owner, intruder = Worker(client, "owner"), Worker(client, "intruder")
    trial_id = owner.claim()["trial_id"]  # type: ignore[index]
    owner.report(trial_id, 0, loss=1.0)
    before = get_trial(client, trial_id)

    answers = [intruder.heartbeat(trial_id), intruder.report(trial_id, 0, loss=9.0),
               intruder.report(trial_id, 5, loss=9.0), intruder.complete(trial_id, val_accuracy=1.0),
               intruder.fail(trial_id, "sabotage", retryable=True), intruder.fail(trial_id, "sabotage")]

    for answer in answers:
        assert answer.status_code == 409, answer.text
        assert answer.json()["detail"] == f"trial {trial_id} is leased to worker 'owner', not to 'intruder'"
    assert get_trial(client, trial_id) == before


def test_reports_on_a_finished_trial_get_409_and_change_nothing(client: TestClient):
    create_sweep(client, grid_spec())
    worker = Worker(client, "w1")
    trial_id = worker.claim()["trial_id"]  # type: ignore[index]
    worker.complete(trial_id, val_accuracy=0.5)
    before = get_trial(client, trial_id)

    for answer in (worker.heartbeat(trial_id), worker.report(trial_id, 3, loss=1.0), worker.fail(trial_id),
                   worker.release(trial_id)):
        assert answer.status_code == 409
        assert answer.json()["detail"] == f"trial {trial_id} is completed, not running: worker 'w1' holds no " \
                                          f"lease on it"
    assert get_trial(client, trial_id) == before


def test_a_repeated_complete_with_the_same_token_answers_the_stored_trial_and_changes_nothing(client: TestClient):
    # A worker whose answer was lost sends its report again: it must see success, not a conflict.
    create_sweep(client, grid_spec())
    worker = Worker(client, "w1")
    trial_id = worker.claim_id()
    first = worker.complete(trial_id, val_accuracy=0.5)
    before = get_trial(client, trial_id)

    again = worker.complete(trial_id, val_accuracy=0.9)

    assert again.status_code == 200 and again.json() == first.json()
    assert again.json()["metrics"] == {"val_accuracy": 0.5}
    assert get_trial(client, trial_id) == before


@pytest.mark.parametrize("retryable", [True, False])
def test_a_repeated_fail_with_the_same_token_answers_the_stored_trial_and_counts_once(client: TestClient,
                                                                                      retryable: bool):
    create_sweep(client, grid_spec(values=1, max_attempts=3))
    worker = Worker(client, "w1")
    trial_id = worker.claim_id()
    first = worker.fail(trial_id, retryable=retryable)
    before = get_trial(client, trial_id)

    again = worker.fail(trial_id, retryable=retryable)

    assert again.status_code == 200 and again.json() == first.json()
    assert again.json()["state"] == ("pending" if retryable else "failed")
    assert get_trial(client, trial_id) == before


def test_a_repeated_report_of_another_kind_is_a_conflict_not_a_repeat(client: TestClient):
    create_sweep(client, grid_spec(values=1))
    worker = Worker(client, "w1")
    trial_id = worker.claim_id()
    worker.release(trial_id)

    answer = worker.complete(trial_id, val_accuracy=0.9)

    assert answer.status_code == 409
    assert get_trial(client, trial_id)["state"] == "pending"


def test_heartbeat_extends_the_lease(client: TestClient):
    create_sweep(client, grid_spec())
    worker = Worker(client, "w1")
    trial_id = worker.claim()["trial_id"]  # type: ignore[index]
    before = get_trial(client, trial_id)["lease_expires_at"]
    time.sleep(0.01)
    worker.heartbeat(trial_id)
    assert get_trial(client, trial_id)["lease_expires_at"] > before


def test_non_retryable_failure_fails_the_trial_with_its_error(client: TestClient):
    create_sweep(client, grid_spec(values=1))
    worker = Worker(client, "w1")
    trial_id = worker.claim()["trial_id"]  # type: ignore[index]

    failed = worker.fail(trial_id, "ValueError: bad shapes").json()

    assert failed["state"] == "failed" and failed["error"] == "ValueError: bad shapes"
    assert failed["finished_at"] is not None
    assert worker.claim() is None


def test_retryable_failure_requeues_the_trial_until_the_specs_attempts_run_out(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=1, max_attempts=2))
    first, second = Worker(client, "w1"), Worker(client, "w2")
    trial_id = first.claim()["trial_id"]  # type: ignore[index]

    requeued = first.fail(trial_id, "CUDA out of memory", retryable=True).json()
    assert requeued["state"] == "pending" and requeued["worker_id"] is None
    assert requeued["error"] == "CUDA out of memory" and requeued["attempts"] == 1

    again = second.claim()
    assert again is not None and again["trial_id"] == trial_id
    final = second.fail(trial_id, "CUDA out of memory", retryable=True).json()
    assert final["state"] == "failed" and final["attempts"] == 2
    assert get_sweep(client, sweep["id"])["status"] == "failed"  # its only trial failed


def test_a_retried_trial_that_completes_drops_its_old_error(client: TestClient):
    create_sweep(client, grid_spec(values=1))
    worker = Worker(client, "w1")
    trial_id = worker.claim()["trial_id"]  # type: ignore[index]
    worker.fail(trial_id, "flaky", retryable=True)
    assert worker.claim()["trial_id"] == trial_id  # type: ignore[index]
    done = worker.complete(trial_id, val_accuracy=0.5).json()
    assert done["state"] == "completed" and done["error"] is None and done["attempts"] == 2


def test_lease_expiry_requeues_trial_for_another_worker(client_with: Callable[..., TestClient]):
    client = client_with(lease_seconds=0.05)
    create_sweep(client, grid_spec(values=1))
    lost, rescuer = Worker(client, "lost"), Worker(client, "rescuer")
    trial_id = lost.claim()["trial_id"]  # type: ignore[index]
    time.sleep(0.1)

    rescued = rescuer.claim()

    assert rescued is not None and rescued["trial_id"] == trial_id
    trial = get_trial(client, trial_id)
    assert trial["worker_id"] == "rescuer" and trial["attempts"] == 2 and trial["error"] == "worker lost"
    assert lost.heartbeat(trial_id).status_code == 409
    assert rescuer.complete(trial_id, val_accuracy=0.5).status_code == 200


def test_lease_expiry_fails_the_trial_as_worker_lost_after_max_attempts(client_with: Callable[..., TestClient]):
    client = client_with(lease_seconds=0.05)
    sweep = create_sweep(client, grid_spec(values=1, max_attempts=1))
    trial_id = Worker(client, "lost").claim()["trial_id"]  # type: ignore[index]
    time.sleep(0.1)

    assert Worker(client, "other").claim() is None

    trial = get_trial(client, trial_id)
    assert trial["state"] == "failed" and trial["error"] == "worker lost" and trial["worker_id"] == "lost"
    assert trial["failure_kind"] == "crash" and trial["traceback"] is None
    assert get_sweep(client, sweep["id"])["status"] == "failed"  # its only trial failed


def test_an_expired_lease_still_counts_until_it_is_reaped(client_with: Callable[..., TestClient]):
    # The reaper's first pass is an hour away: only a claim would reap the lease here.
    client = client_with(lease_seconds=0.05, reap_interval_seconds=3600)
    create_sweep(client, grid_spec(values=1))
    worker = Worker(client, "slow")
    trial_id = worker.claim()["trial_id"]  # type: ignore[index]
    time.sleep(0.1)
    assert worker.heartbeat(trial_id).status_code == 200
    assert worker.complete(trial_id, val_accuracy=0.1).status_code == 200


def test_grid_sweep_hands_out_every_configuration_once_then_204(client: TestClient):
    spec = grid_spec(values=2)
    spec["hparams"]["optimizer"] = {"type": "discrete", "values": ["adam", "sgd"]}
    sweep = create_sweep(client, spec)
    worker = Worker(client, "w1")
    configs = []
    while (assignment := worker.claim()) is not None:
        configs.append(assignment["hparams"])
        worker.complete(assignment["trial_id"], val_accuracy=0.5)

    strategy = make_strategy(parse_spec(spec))
    assert configs == [strategy.config_at(i) for i in range(strategy.total)]
    assert len(configs) == sweep["total_trials"] == 4
    assert get_sweep(client, sweep["id"])["status"] == "completed"


def test_sweep_stays_running_while_its_last_trial_runs(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=1))
    worker = Worker(client, "w1")
    trial_id = worker.claim()["trial_id"]  # type: ignore[index]

    assert Worker(client, "w2").claim() is None
    assert get_sweep(client, sweep["id"])["status"] == "running"

    worker.complete(trial_id, val_accuracy=0.5)
    assert get_sweep(client, sweep["id"])["status"] == "completed"


def test_pending_trials_are_served_before_new_ones_and_sweeps_oldest_first(client: TestClient):
    first = create_sweep(client, grid_spec(name="first", values=2))
    second = create_sweep(client, grid_spec(name="second", values=2))
    a, b = Worker(client, "a"), Worker(client, "b")
    trial_a = a.claim()
    assert trial_a["sweep_id"] == first["id"]  # type: ignore[index]
    a.fail(trial_a["trial_id"], "retry me", retryable=True)  # type: ignore[index]

    assert b.claim()["trial_id"] == trial_a["trial_id"]  # type: ignore[index]
    assert a.claim()["sweep_id"] == first["id"]  # type: ignore[index]
    assert Worker(client, "c").claim()["sweep_id"] == second["id"]  # type: ignore[index]


def test_non_finite_metrics_are_stored_as_null(client: TestClient):
    create_sweep(client, grid_spec(values=1))
    worker = Worker(client, "w1")
    trial_id = worker.claim()["trial_id"]  # type: ignore[index]
    # Sent as the strings pydantic accepts for floats, so they pass the JSON guard.
    answer = worker.post(trial_id, "metrics", epoch=0, metrics={"loss": "nan", "val_accuracy": "inf", "ok": 1})
    assert answer.status_code == 200, answer.text
    worker.post(trial_id, "complete", metrics={"val_accuracy": "-inf", "loss": "NaN"})

    trial = get_trial(client, trial_id)
    assert without_times(trial["history"]) == [{"epoch": 0, "metrics": {"loss": None, "val_accuracy": None, "ok": 1.0}}]
    assert trial["metrics"] == {"val_accuracy": None, "loss": None}


BAD_REPORTS = {
    "claim without worker": ("claim", {"host": "h"}, ["body", "worker_id"]),
    "claim with empty worker": ("claim", {"worker_id": "", "host": "h"}, ["body", "worker_id"]),
    "claim not an object": ("claim", ["w"], ["body"]),
    "metrics negative epoch": ("1/metrics", {"worker_id": "w", "epoch": -1, "metrics": {}}, ["body", "epoch"]),
    "metrics huge epoch": ("1/metrics", {"worker_id": "w", "epoch": 2**40, "metrics": {}}, ["body", "epoch"]),
    "metrics not numbers": ("1/metrics", {"worker_id": "w", "epoch": 0, "metrics": {"a": "x"}},
                            ["body", "metrics", "a"]),
    "complete extra field": ("1/complete", {"worker_id": "w", "metrics": {}, "x": 1}, ["body", "x"]),
    "fail error not text": ("1/fail", {"worker_id": "w", "error": None}, ["body", "error"]),
    "heartbeat empty body": ("1/heartbeat", {}, ["body", "worker_id"]),
}


@pytest.mark.parametrize("path, body, loc", BAD_REPORTS.values(), ids=BAD_REPORTS.keys())
def test_malformed_worker_messages_are_422_naming_the_field(client: TestClient, path, body, loc):
    create_sweep(client, grid_spec())
    Worker(client, "w").claim()

    response = client.post(f"{API}/trials/{path}", json=body)

    assert response.status_code == 422, response.text
    assert any(problem["loc"] == loc for problem in response.json()["detail"]), response.json()

"""Sweep control: pause, resume and cancel, their effect on claims and running trials, and invalid transitions."""

from __future__ import annotations

import time

import pytest
from api_testing import Worker, control, create_sweep, get_sweep, get_trial, grid_spec
from fastapi.testclient import TestClient


def test_cancel_ends_the_sweep_and_cancels_its_pending_trials(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=5, max_attempts=3))
    worker = Worker(client, "w1")
    pending = worker.claim_id()
    worker.fail(pending, "retry me", retryable=True)

    answer = control(client, sweep["id"], "cancel")

    assert answer.status_code == 200, answer.text
    cancelled = answer.json()
    assert cancelled["status"] == "cancelled" and cancelled["reason"] == "cancelled on request"
    assert cancelled["finished_at"] is not None
    assert cancelled["trial_counts"]["pending"] == 0 and cancelled["trial_counts"]["cancelled"] == 1
    assert get_trial(client, pending)["state"] == "cancelled"
    assert worker.claim() is None
    assert get_sweep(client, sweep["id"]) == cancelled


@pytest.mark.parametrize("report", ["complete", "fail", "release", "crash"])
def test_a_running_trial_of_a_cancelled_sweep_is_told_to_cancel_and_ends_cancelled(client: TestClient, report: str):
    sweep = create_sweep(client, grid_spec(values=3, max_attempts=3))
    worker = Worker(client, "w1")
    trial_id = worker.claim_id()
    assert worker.heartbeat(trial_id).json() == {"action": "continue"}

    control(client, sweep["id"], "cancel")

    assert worker.heartbeat(trial_id).json() == {"action": "cancel"}
    assert worker.report(trial_id, 0, loss=1.0).json() == {"action": "cancel"}
    answer = {"complete": lambda: worker.complete(trial_id, val_accuracy=0.5),
              "fail": lambda: worker.fail(trial_id, "stopped: cancelled", retryable=True),
              "release": lambda: worker.release(trial_id, "stopped: cancelled"),
              "crash": lambda: worker.fail(trial_id, "killed", kind="crash")}[report]()
    assert answer.status_code == 200, answer.text
    trial = answer.json()
    assert trial["state"] == "cancelled" and trial["finished_at"] is not None and trial["lease_expires_at"] is None
    final = get_sweep(client, sweep["id"])
    assert final["status"] == "cancelled" and final["best_trial"] is None
    assert final["trial_counts"]["cancelled"] == 1 and final["trial_counts"]["running"] == 0


def test_a_cancelled_sweeps_running_trial_whose_worker_is_lost_ends_cancelled(client_with):
    client = client_with(lease_seconds=0.05, reap_interval_seconds=3600)
    sweep = create_sweep(client, grid_spec(values=2, max_attempts=3))
    trial_id = Worker(client, "lost").claim_id()
    control(client, sweep["id"], "cancel")
    time.sleep(0.1)

    assert Worker(client, "other").claim() is None  # reaps the lease: not requeued

    assert get_trial(client, trial_id)["state"] == "cancelled"


def test_a_restarted_worker_does_not_get_back_its_trial_of_a_cancelled_sweep(client: TestClient):
    cancelled = create_sweep(client, grid_spec(name="cancelled", values=2))
    trial_id = Worker(client, "gpu-0").claim_id()
    control(client, cancelled["id"], "cancel")
    other = create_sweep(client, grid_spec(name="other", values=1))

    assignment = Worker(client, "gpu-0").claim()

    assert assignment is not None and assignment["sweep_id"] == other["id"]
    assert get_trial(client, trial_id)["state"] == "cancelled"


def test_pause_stops_new_claims_while_running_trials_finish_normally(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=3))
    worker = Worker(client, "w1")
    running = worker.claim_id()

    paused = control(client, sweep["id"], "pause")

    assert paused.status_code == 200 and paused.json()["status"] == "paused" and paused.json()["reason"] is None
    assert Worker(client, "w2").claim() is None
    assert worker.heartbeat(running).json() == {"action": "continue"}
    assert worker.report(running, 0, loss=1.0).json() == {"action": "continue"}
    assert worker.complete(running, val_accuracy=0.5).json()["state"] == "completed"
    assert worker.claim() is None
    assert get_sweep(client, sweep["id"])["status"] == "paused"


def test_a_paused_sweeps_pending_trials_wait_and_other_sweeps_go_on(client: TestClient):
    paused = create_sweep(client, grid_spec(name="paused", values=2))
    worker = Worker(client, "w1")
    pending = worker.claim_id()
    worker.fail(pending, "retry me", retryable=True)
    control(client, paused["id"], "pause")
    other = create_sweep(client, grid_spec(name="other", values=1))

    assert worker.claim()["sweep_id"] == other["id"]  # type: ignore[index]
    assert get_trial(client, pending)["state"] == "pending"


def test_resume_hands_out_the_sweeps_trials_again(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=2))
    control(client, sweep["id"], "pause")
    worker = Worker(client, "w1")
    assert worker.claim() is None

    resumed = control(client, sweep["id"], "resume")

    assert resumed.status_code == 200 and resumed.json()["status"] == "running"
    while (assignment := worker.claim()) is not None:
        worker.complete(assignment["trial_id"], val_accuracy=0.5)
    assert get_sweep(client, sweep["id"])["status"] == "completed"


def test_a_paused_sweep_with_nothing_left_to_run_completes(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=1))
    worker = Worker(client, "w1")
    trial_id = worker.claim_id()
    control(client, sweep["id"], "pause")

    worker.complete(trial_id, val_accuracy=0.5)

    assert get_sweep(client, sweep["id"])["status"] == "completed"


def test_a_paused_sweep_can_be_cancelled(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=2))
    control(client, sweep["id"], "pause")
    assert control(client, sweep["id"], "cancel").json()["status"] == "cancelled"


def finish(client: TestClient, sweep_id: int) -> None:
    worker = Worker(client, "finisher")
    while (assignment := worker.claim()) is not None:
        worker.complete(assignment["trial_id"], val_accuracy=0.5)
    assert get_sweep(client, sweep_id)["status"] == "completed"


INVALID = {
    # (how the sweep gets to its status, action): the message
    ("completed", "resume"): "sweep {id} is completed: only a paused sweep can be resumed",
    ("completed", "pause"): "sweep {id} is completed: only a running sweep can be paused",
    ("completed", "cancel"): "sweep {id} is completed: only a running or paused sweep can be cancelled",
    ("cancelled", "cancel"): "sweep {id} is cancelled: only a running or paused sweep can be cancelled",
    ("cancelled", "resume"): "sweep {id} is cancelled: only a paused sweep can be resumed",
    ("cancelled", "pause"): "sweep {id} is cancelled: only a running sweep can be paused",
    ("running", "resume"): "sweep {id} is running: only a paused sweep can be resumed",
    ("paused", "pause"): "sweep {id} is paused: only a running sweep can be paused",
    ("failed", "resume"): "sweep {id} is failed: only a paused sweep can be resumed",
    ("failed", "cancel"): "sweep {id} is failed: only a running or paused sweep can be cancelled",
}


@pytest.mark.parametrize("status, action", INVALID.keys(), ids=[f"{a} {s}" for s, a in INVALID])
def test_an_invalid_transition_is_409_naming_the_current_status_and_changes_nothing(
        client: TestClient, status: str, action: str):
    sweep = create_sweep(client, grid_spec(values=2, max_failures=1))
    if status == "completed":
        finish(client, sweep["id"])
    elif status == "failed":
        worker = Worker(client, "w1")
        worker.fail(worker.claim_id(), "boom")
    elif status != "running":
        control(client, sweep["id"], {"cancelled": "cancel", "paused": "pause"}[status])
    before = get_sweep(client, sweep["id"])
    assert before["status"] == status

    answer = control(client, sweep["id"], action)

    assert answer.status_code == 409
    assert answer.json() == {"detail": INVALID[status, action].format(id=sweep["id"])}
    assert get_sweep(client, sweep["id"]) == before


@pytest.mark.parametrize("action", ["pause", "resume", "cancel"])
def test_control_of_an_unknown_sweep_is_404(client: TestClient, action: str):
    answer = control(client, 4242, action)
    assert answer.status_code == 404 and answer.json() == {"detail": "sweep 4242 not found"}

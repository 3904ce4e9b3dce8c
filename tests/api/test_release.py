"""Releasing a trial: a worker shutting down gives its trial back unfinished, without using up an attempt."""

from __future__ import annotations

import pytest
from api_testing import API, Worker, create_sweep, get_sweep, get_trial, grid_spec, without_times
from fastapi.testclient import TestClient


def test_a_released_trial_is_pending_again_with_its_attempt_given_back_and_its_history_kept(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=1))
    worker = Worker(client, "w1")
    trial_id = worker.claim_id()
    worker.report(trial_id, 0, loss=2.0)
    worker.report(trial_id, 1, loss=1.0)

    answer = worker.release(trial_id, "SIGTERM: shutting down", epochs_done=2)

    assert answer.status_code == 200, answer.text
    released = answer.json()
    assert released["state"] == "pending" and released["attempts"] == 0
    assert released["worker_id"] is None and released["lease_expires_at"] is None
    assert released["error"] is None and released["finished_at"] is None
    assert without_times(get_trial(client, trial_id)["history"]) == [{"epoch": 0, "metrics": {"loss": 2.0}},
                                                      {"epoch": 1, "metrics": {"loss": 1.0}}]
    assert get_sweep(client, sweep["id"])["trial_counts"]["pending"] == 1


def test_a_released_trial_is_resumed_by_the_next_worker_as_the_same_attempt(client: TestClient):
    create_sweep(client, grid_spec(values=1, max_attempts=1))
    trial_id = Worker(client, "leaving").claim_id()
    Worker(client, "leaving").release(trial_id)

    again = Worker(client, "next").claim()

    # With max_attempts 1, a release that used up the attempt would leave nothing to claim.
    assert again is not None and again["trial_id"] == trial_id and again["attempt"] == 1


def test_releasing_many_times_never_uses_up_the_attempts(client: TestClient):
    create_sweep(client, grid_spec(values=1, max_attempts=2))
    for round_ in range(5):
        worker = Worker(client, f"w{round_}")
        trial_id = worker.claim_id()
        worker.release(trial_id)
    assert get_trial(client, trial_id)["attempts"] == 0

    worker = Worker(client, "last")
    assert worker.claim()["attempt"] == 1  # type: ignore[index]
    worker.fail(trial_id, "flaky", retryable=True)
    assert get_trial(client, trial_id)["state"] == "pending"  # a second attempt is still left


def test_a_resumed_trial_re_reports_later_epochs_and_each_epoch_is_stored_once(client: TestClient):
    create_sweep(client, grid_spec(values=1))
    first = Worker(client, "first")
    trial_id = first.claim_id()
    for epoch in range(3):
        first.report(trial_id, epoch, loss=3.0 - epoch)
    first.release(trial_id, epochs_done=2)  # its checkpoint holds 2 epochs; epoch 2's report is stale

    second = Worker(client, "second")
    assert second.claim_id() == trial_id
    for epoch in (2, 3):
        second.report(trial_id, epoch, loss=0.5 / (epoch + 1))
    second.complete(trial_id, val_accuracy=0.9)

    trial = get_trial(client, trial_id)
    assert [entry["epoch"] for entry in trial["history"]] == [0, 1, 2, 3]
    assert trial["history"][2]["metrics"] == {"loss": pytest.approx(0.5 / 3)}
    assert trial["state"] == "completed" and trial["attempts"] == 1


def test_release_by_a_worker_without_the_lease_is_409_and_changes_nothing(client: TestClient):
    create_sweep(client, grid_spec(values=1))
    owner = Worker(client, "owner")
    trial_id = owner.claim_id()
    before = get_trial(client, trial_id)

    answer = Worker(client, "intruder").release(trial_id)

    assert answer.status_code == 409
    assert answer.json()["detail"] == f"trial {trial_id} is leased to worker 'owner', not to 'intruder'"
    assert get_trial(client, trial_id) == before


def test_release_of_a_finished_trial_is_409(client: TestClient):
    create_sweep(client, grid_spec(values=1))
    worker = Worker(client, "w1")
    trial_id = worker.claim_id()
    worker.complete(trial_id, val_accuracy=0.5)

    answer = worker.release(trial_id)

    assert answer.status_code == 409
    assert answer.json()["detail"] == f"trial {trial_id} is completed, not running: worker 'w1' holds no lease on it"
    assert get_trial(client, trial_id)["state"] == "completed"


def test_release_of_an_unknown_trial_is_404(client: TestClient):
    answer = Worker(client, "w1").release(999)
    assert answer.status_code == 404 and answer.json() == {"detail": "trial 999 not found"}


@pytest.mark.parametrize("body, loc", [({"worker_id": "w"}, ["body", "reason"]),
                                       ({"worker_id": "w", "reason": "x", "epochs_done": -1}, ["body", "epochs_done"]),
                                       ({"reason": "x"}, ["body", "worker_id"])])
def test_a_malformed_release_is_422_naming_the_field(client: TestClient, body: dict, loc: list[str]):
    create_sweep(client, grid_spec(values=1))
    trial_id = Worker(client, "w").claim_id()

    answer = client.post(f"{API}/trials/{trial_id}/release", json=body)

    assert answer.status_code == 422
    assert any(problem["loc"] == loc for problem in answer.json()["detail"]), answer.json()

"""How a sweep ends once nothing is left to run: completed when any trial gave a result (completed, or pruned
by the stopping rule after training), failed when every trial failed; and the first failure's error, which
GET /sweeps/{id} carries for any sweep that has one."""

from __future__ import annotations

from api_testing import API, Worker, create_sweep, get_sweep, grid_spec
from fastapi.testclient import TestClient


def test_a_sweep_whose_every_trial_failed_ends_failed_with_the_first_error_as_its_reason(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=3, dataset="npz:nope.npz"))
    worker = Worker(client, "w1")
    for _ in range(3):
        worker.fail(worker.claim_id(), "FileNotFoundError: data/nope.npz not found\nTraceback ...")

    ended = get_sweep(client, sweep["id"])

    assert ended["status"] == "failed"
    assert ended["trial_counts"]["failed"] == 3
    assert ended["error"] == "trial 1: FileNotFoundError: data/nope.npz not found"
    assert ended["reason"] == "no trial completed: 3 failed; the first, trial 1: FileNotFoundError: data/nope.npz " \
                              "not found"
    assert ended["finished_at"] is not None


def test_a_sweep_with_one_completed_trial_among_failures_is_completed_and_names_its_first_error(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=3))
    worker = Worker(client, "w1")
    worker.fail(worker.claim_id(), "ValueError: bad shapes")
    worker.complete(worker.claim_id(), val_accuracy=0.9)
    worker.fail(worker.claim_id(), "later error")

    ended = get_sweep(client, sweep["id"])

    assert ended["status"] == "completed"
    assert ended["reason"] is None
    assert ended["error"] == "trial 1: ValueError: bad shapes"


def test_a_sweep_without_failures_has_no_error(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=1))
    worker = Worker(client, "w1")
    worker.complete(worker.claim_id(), val_accuracy=0.9)

    assert get_sweep(client, sweep["id"])["error"] is None


def test_the_list_of_sweeps_carries_each_sweeps_first_error(client: TestClient):
    failing = create_sweep(client, grid_spec(name="failing", values=1))
    Worker(client, "w1").fail(Worker(client, "w1").claim_id(), "boom")
    clean = create_sweep(client, grid_spec(name="clean", values=1))

    listed = {sweep["id"]: sweep for sweep in client.get(f"{API}/sweeps").json()["data"]}

    assert listed[failing["id"]]["error"] == "trial 1: boom" and listed[failing["id"]]["status"] == "failed"
    assert listed[clean["id"]]["error"] is None


def test_a_failed_sweep_can_be_extended_and_runs_again_like_a_completed_one(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=3, search={"strategy": "grid", "max_trials": 1}))
    worker = Worker(client, "w1")
    worker.fail(worker.claim_id(), "FileNotFoundError: data/nope.npz")
    assert get_sweep(client, sweep["id"])["status"] == "failed"

    response = client.post(f"{API}/sweeps/{sweep['id']}/extend", json={"max_trials": 2})

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "running" and response.json()["reason"] is None
    worker.complete(worker.claim_id(), val_accuracy=0.5)
    assert get_sweep(client, sweep["id"])["status"] == "completed"

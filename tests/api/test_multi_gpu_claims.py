"""Multi-GPU trials on the server: a sweep's trials go only to workers with as many GPUs as a trial needs,
and a sweep whose trials no connected worker can run says so, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable

from api_testing import Worker, create_sweep, get_sweep, grid_spec, list_workers
from fastapi.testclient import TestClient


def _two_gpu_spec(name: str = "pairs", values: int = 2) -> dict[str, object]:
    return grid_spec(name, values=values, train={"epochs": 2, "gpus_per_trial": 2})


def test_the_server_never_hands_a_two_gpu_trial_to_a_one_gpu_worker(client: TestClient) -> None:
    sweep = create_sweep(client, _two_gpu_spec())
    single = Worker(client, "box-gpu0", gpu="0", gpus=1)

    assert single.claim() is None
    pair = Worker(client, "box-gpus0,1", gpu="0,1", gpus=2)
    assignment = pair.claim()
    assert assignment is not None and assignment["sweep_id"] == sweep["id"]
    assert assignment["train"]["gpus_per_trial"] == 2


def test_a_pending_two_gpu_trial_waits_for_a_two_gpu_worker_while_one_gpu_workers_get_other_sweeps(
        client: TestClient) -> None:
    pairs = create_sweep(client, _two_gpu_spec())
    pair = Worker(client, "box-gpus0,1", gpus=2)
    trial_id = pair.claim_id()
    assert pair.release(trial_id).status_code == 200  # pending again: the oldest pending trial of all
    singles = create_sweep(client, grid_spec("singles", values=1))

    single = Worker(client, "box-gpu2", gpus=1)
    assignment = single.claim()

    assert assignment is not None and assignment["sweep_id"] == singles["id"]
    assert single.claim()["sweep_id"] == singles["id"]  # its own, held: never the pending pair trial
    again = Worker(client, "other-gpus0,1", gpus=2).claim()
    assert again is not None and (again["sweep_id"], again["trial_id"]) == (pairs["id"], trial_id)


def test_a_worker_with_more_gpus_than_a_trial_needs_runs_it(client: TestClient) -> None:
    create_sweep(client, grid_spec("singles", values=1))

    assert Worker(client, "box-gpus0,1,2,3", gpus=4).claim() is not None


def test_a_claim_records_how_many_gpus_its_worker_has(client: TestClient) -> None:
    Worker(client, "box-gpus0,1", gpu="0,1", gpus=2).claim()
    Worker(client, "box-cpu0", gpus=1).claim()

    workers = list_workers(client)
    assert (workers["box-gpus0,1"]["gpu"], workers["box-gpus0,1"]["gpus"]) == ("0,1", 2)
    assert workers["box-cpu0"]["gpus"] == 1


def test_a_sweep_that_no_connected_worker_can_run_says_which_worker_it_waits_for(client: TestClient) -> None:
    sweep = create_sweep(client, _two_gpu_spec())
    assert get_sweep(client, sweep["id"])["waiting_for"] == {
        "gpus_per_trial": 2, "most_gpus": None, "message": "a worker with 2 GPUs: no worker is connected"}

    Worker(client, "box-gpu0", gpus=1).claim()

    assert get_sweep(client, sweep["id"])["waiting_for"] == {
        "gpus_per_trial": 2, "most_gpus": 1, "message": "a worker with 2 GPUs: the connected workers have at most 1"}
    listed = client.get("/api/v1/sweeps").json()["data"]
    assert listed[0]["waiting_for"]["most_gpus"] == 1


def test_a_sweep_waits_for_no_one_once_a_worker_with_enough_gpus_is_connected(client: TestClient) -> None:
    sweep = create_sweep(client, _two_gpu_spec(values=3))
    Worker(client, "box-gpu0", gpus=1).claim()
    Worker(client, "box-gpus1,2", gpus=2).claim()

    assert get_sweep(client, sweep["id"])["waiting_for"] is None


def test_a_one_gpu_sweep_or_one_without_trials_left_waits_for_no_one(client: TestClient) -> None:
    singles = create_sweep(client, grid_spec("singles", values=1))
    pairs = create_sweep(client, _two_gpu_spec(values=1))
    pair = Worker(client, "box-gpus0,1", gpus=2)
    trial_id = pair.claim_id()  # its only trial, running: nothing left to hand out
    assert pair.complete(trial_id, val_accuracy=0.5).status_code == 200

    assert get_sweep(client, singles["id"])["waiting_for"] is None
    assert get_sweep(client, pairs["id"])["waiting_for"] is None


def test_a_worker_silent_for_longer_than_the_lease_no_longer_counts_as_connected(
        client_with: Callable[..., TestClient]) -> None:
    client = client_with(lease_seconds=3, heartbeat_seconds=0.5)
    sweep = create_sweep(client, _two_gpu_spec(values=3))
    pair = Worker(client, "box-gpus0,1", gpus=2)
    pair.complete(pair.claim_id(), val_accuracy=0.5)
    assert get_sweep(client, sweep["id"])["waiting_for"] is None

    time.sleep(3.3)

    assert get_sweep(client, sweep["id"])["waiting_for"]["message"] == \
        "a worker with 2 GPUs: no worker is connected"

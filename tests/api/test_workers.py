"""GET /workers: every worker seen, where it runs, whether it is idle, busy or lost, and its trial."""

from __future__ import annotations

import time

from api_testing import API, Worker, create_sweep, grid_spec, list_workers
from fastapi.testclient import TestClient


def test_no_workers_on_a_new_server(client: TestClient):
    assert client.get(f"{API}/workers").json() == {"data": [], "count": 0}


def test_a_claiming_worker_is_recorded_with_its_host_gpu_and_trial(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=2))
    trial_id = Worker(client, "box-a-gpu0", host="box-a", gpu="0").claim_id()
    Worker(client, "box-b-cpu0", host="box-b").claim_id()
    Worker(client, "box-c-cpu0", host="box-c").claim()  # no work left: recorded all the same

    workers = list_workers(client)

    assert sorted(workers) == ["box-a-gpu0", "box-b-cpu0", "box-c-cpu0"]
    busy = workers["box-a-gpu0"]
    assert (busy["host"], busy["gpu"], busy["state"], busy["trial_id"]) == ("box-a", "0", "busy", trial_id)
    assert busy["last_heartbeat_at"].endswith("Z") and busy["first_seen_at"] <= busy["last_heartbeat_at"]
    assert workers["box-b-cpu0"]["gpu"] is None and workers["box-b-cpu0"]["state"] == "busy"
    # The trial each holds, also as its sweep and its number there (what people read).
    assert (busy["sweep_id"], busy["trial_number"]) == (sweep["id"], 1)
    assert (workers["box-b-cpu0"]["sweep_id"], workers["box-b-cpu0"]["trial_number"]) == (sweep["id"], 2)
    idle = workers["box-c-cpu0"]
    assert (idle["host"], idle["state"], idle["trial_id"]) == ("box-c", "idle", None)
    assert (idle["sweep_id"], idle["trial_number"]) == (None, None)


def test_a_worker_is_idle_again_once_its_trial_ends(client: TestClient):
    create_sweep(client, grid_spec(values=3, max_attempts=3))
    worker = Worker(client, "w1")
    for end in (lambda t: worker.complete(t, val_accuracy=0.5), lambda t: worker.fail(t, "boom", retryable=True),
                lambda t: worker.release(t)):
        trial_id = worker.claim_id()
        assert list_workers(client)["w1"]["state"] == "busy"
        assert end(trial_id).status_code == 200
        idle = list_workers(client)["w1"]
        assert (idle["state"], idle["trial_id"]) == ("idle", None)


def test_every_heartbeat_and_metrics_report_is_a_sign_of_life(client: TestClient):
    create_sweep(client, grid_spec(values=1))
    worker = Worker(client, "w1")
    trial_id = worker.claim_id()
    seen = [list_workers(client)["w1"]["last_heartbeat_at"]]
    for call in (lambda: worker.heartbeat(trial_id), lambda: worker.report(trial_id, 0, loss=1.0)):
        time.sleep(0.01)
        assert call().status_code == 200
        seen.append(list_workers(client)["w1"]["last_heartbeat_at"])

    assert seen[0] < seen[1] < seen[2]


def test_a_silent_worker_is_lost_after_the_lease_ttl_and_back_when_it_calls(client_with):
    # A lease of 1 s: after the heartbeat, the list must come within it to read the worker busy.
    client = client_with(lease_seconds=1.0, reap_interval_seconds=3600)
    create_sweep(client, grid_spec(values=1))
    worker = Worker(client, "w1", host="box", gpu="1")
    trial_id = worker.claim_id()
    time.sleep(1.1)

    lost = list_workers(client)["w1"]
    assert (lost["state"], lost["trial_id"], lost["host"], lost["gpu"]) == ("lost", trial_id, "box", "1")

    assert worker.heartbeat(trial_id).status_code == 200  # not reaped yet: its lease still counts
    assert list_workers(client)["w1"]["state"] == "busy"


def test_a_rejected_call_does_not_record_the_worker(client: TestClient):
    create_sweep(client, grid_spec(values=1))
    trial_id = Worker(client, "owner").claim_id()

    assert Worker(client, "intruder").heartbeat(trial_id).status_code == 409

    assert sorted(list_workers(client)) == ["owner"]


def test_a_worker_that_moves_is_shown_where_it_last_claimed(client: TestClient):
    Worker(client, "w1", host="old-box", gpu="0").claim()
    Worker(client, "w1", host="new-box", gpu=None).claim()

    moved = list_workers(client)["w1"]

    assert (moved["host"], moved["gpu"]) == ("new-box", None)


def test_workers_are_listed_by_id_a_page_at_a_time(client: TestClient):
    for name in ("c", "a", "d", "b"):
        Worker(client, name).claim()

    page = client.get(f"{API}/workers", params={"limit": 2, "offset": 1}).json()

    assert page["count"] == 4 and [worker["id"] for worker in page["data"]] == ["b", "c"]
    assert client.get(f"{API}/workers", params={"limit": 0}).status_code == 422

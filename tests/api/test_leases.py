"""Leases: what an assignment tells a worker, the background reaper, and workers that restart or lose a lease."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from api_testing import API, Worker, create_sweep, get_sweep, get_trial, grid_spec, without_times
from fastapi.testclient import TestClient

from api.app import create_app
from api.reaper import THREAD_NAME
from api.settings import Settings


def wait_until(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll until `condition()` is truthy; its value. Fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return value


def reaper_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == THREAD_NAME]


# -- assignments -----------------------------------------------------------------------------------


def test_an_assignment_carries_the_attempt_checkpoint_folder_and_heartbeat(client_with, settings: Settings):
    client = client_with(lease_seconds=30, heartbeat_seconds=4)
    sweep = create_sweep(client, grid_spec(values=1))

    assignment = Worker(client, "w1").claim()

    assert assignment is not None
    folder = (settings.logdir / str(sweep["id"]) / "trial-0001").resolve()
    assert assignment["checkpoint_dir"] == str(folder / "checkpoint")
    assert Path(assignment["checkpoint_dir"]).is_absolute()
    assert assignment["heartbeat_seconds"] == 4.0
    assert assignment["attempt"] == 1


def test_the_heartbeat_in_an_assignment_follows_the_lease_by_default(client_with):
    client = client_with(lease_seconds=3)
    create_sweep(client, grid_spec(values=1))
    assert Worker(client, "w1").claim()["heartbeat_seconds"] == 0.5  # type: ignore[index]


def test_the_attempt_counts_claims_and_a_reclaim_by_the_same_worker_is_the_same_attempt(client: TestClient):
    create_sweep(client, grid_spec(values=1, max_attempts=3))
    first, second = Worker(client, "w1"), Worker(client, "w2")

    trial_id = first.claim_id()
    assert first.claim()["attempt"] == 1  # type: ignore[index]
    first.fail(trial_id, "flaky", retryable=True)
    assert second.claim()["attempt"] == 2  # type: ignore[index]
    assert second.claim()["attempt"] == 2  # type: ignore[index]


# -- workers that restart, or lose their lease -------------------------------------------------


def test_a_restarted_worker_gets_its_own_unfinished_trial_back_before_older_pending_ones(client: TestClient):
    create_sweep(client, grid_spec(values=3))
    restarting, other = Worker(client, "gpu-0"), Worker(client, "other")
    older = other.claim_id()
    own = restarting.claim_id()
    restarting.report(own, 0, loss=1.0)
    other.fail(older, "flaky", retryable=True)  # an older trial now waits, pending

    # The worker process restarts under the same id and asks for work, as it does on start-up.
    again = Worker(client, "gpu-0").claim()

    assert again is not None and again["trial_id"] == own and again["attempt"] == 1
    trial = get_trial(client, own)
    assert trial["state"] == "running" and trial["attempts"] == 1
    assert without_times(trial["history"]) == [{"epoch": 0, "metrics": {"loss": 1.0}}]
    assert Worker(client, "third").claim_id() == older


def test_a_worker_whose_lease_was_taken_over_gets_409_on_every_call_and_nothing_changes(client_with):
    client = client_with(lease_seconds=0.05, reap_interval_seconds=3600)
    create_sweep(client, grid_spec(values=1))
    lost, rescuer = Worker(client, "lost"), Worker(client, "rescuer")
    trial_id = lost.claim_id()
    time.sleep(0.1)
    assert rescuer.claim_id() == trial_id
    rescuer.report(trial_id, 0, loss=0.5)
    before = get_trial(client, trial_id)

    answers = [lost.heartbeat(trial_id), lost.report(trial_id, 0, loss=9.0), lost.complete(trial_id, val_accuracy=1.0),
               lost.fail(trial_id, "late", retryable=True), lost.fail(trial_id, "late", kind="crash"),
               lost.release(trial_id)]

    for answer in answers:
        assert answer.status_code == 409, answer.text
        assert answer.json()["detail"] == f"trial {trial_id} is leased to worker 'rescuer', not to 'lost'"
        assert answer.json()["reason"] == "leased_to_another"
    assert get_trial(client, trial_id) == before


# -- fencing ---------------------------------------------------------------------------------------


def test_a_second_claim_by_the_same_worker_id_fences_off_the_process_that_claimed_first(client: TestClient):
    # A supervisor killed with its training child still running, then started again under the same id:
    # the old child must not go on acting as the trial's holder.
    create_sweep(client, grid_spec(values=1))
    old_process, new_process = Worker(client, "box-cpu0"), Worker(client, "box-cpu0")
    first = old_process.claim()
    again = new_process.claim()
    assert first is not None and again is not None
    trial_id = first["trial_id"]
    assert again["trial_id"] == trial_id and (first["lease_token"], again["lease_token"]) == (1, 2)
    new_process.report(trial_id, 0, loss=0.5)
    before = get_trial(client, trial_id)

    answers = [old_process.heartbeat(trial_id), old_process.report(trial_id, 0, loss=9.0),
               old_process.report(trial_id, 1, loss=9.0), old_process.complete(trial_id, val_accuracy=1.0),
               old_process.fail(trial_id, "late", retryable=True), old_process.release(trial_id)]

    for answer in answers:
        assert answer.status_code == 409, answer.text
        assert answer.json()["detail"] == (f"trial {trial_id} is held under lease token 2, so worker 'box-cpu0''s "
                                           f"token 1 is stale: a later claim by the same worker id took it over")
        assert answer.json()["reason"] == "superseded"  # what the worker acts on
    assert get_trial(client, trial_id) == before
    assert new_process.heartbeat(trial_id).json() == {"action": "continue"}
    assert new_process.complete(trial_id, val_accuracy=0.7).json()["state"] == "completed"


def test_a_stale_complete_after_a_reclaim_changes_nothing_even_once_the_trial_completed(client: TestClient):
    create_sweep(client, grid_spec(values=1))
    old_process, new_process = Worker(client, "w1"), Worker(client, "w1")
    trial_id = old_process.claim_id()
    new_process.claim_id()
    done = new_process.complete(trial_id, val_accuracy=0.7).json()

    late = old_process.complete(trial_id, val_accuracy=0.1)

    assert late.status_code == 409
    trial = get_trial(client, trial_id)
    assert (trial["state"], trial["metrics"]) == ("completed", {"val_accuracy": 0.7})
    assert trial["finished_at"] == done["finished_at"]


def test_every_claim_of_a_trial_issues_a_larger_token(client_with):
    client = client_with(lease_seconds=0.3, reap_interval_seconds=3600)
    create_sweep(client, grid_spec(values=1, max_attempts=5))
    tokens = []
    first = Worker(client, "w1")
    trial_id = first.claim_id()
    tokens.append(first.tokens[trial_id])
    first.release(trial_id)
    second = Worker(client, "w2")
    second.claim_id()
    tokens.append(second.tokens[trial_id])
    second.fail(trial_id, "flaky", retryable=True)
    third = Worker(client, "w3")
    third.claim_id()
    tokens.append(third.tokens[trial_id])
    time.sleep(0.4)  # its lease expires: the next claim reaps it and takes the trial over
    fourth = Worker(client, "w4")
    assert fourth.claim_id() == trial_id
    tokens.append(fourth.tokens[trial_id])

    assert tokens == [1, 2, 3, 4]
    assert third.heartbeat(trial_id).status_code == 409


def test_a_call_without_a_lease_token_is_refused_naming_the_field(client: TestClient):
    create_sweep(client, grid_spec(values=1))
    trial_id = Worker(client, "w1").claim_id()

    answer = client.post(f"{API}/trials/{trial_id}/heartbeat", json={"worker_id": "w1"})

    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "lease_token"]


# -- the reaper ------------------------------------------------------------------------------------


def test_the_reaper_requeues_a_lost_workers_trial_without_any_claim(client_with):
    client = client_with(lease_seconds=0.3, reap_interval_seconds=0.05)
    sweep = create_sweep(client, grid_spec(values=1, max_attempts=2))
    trial_id = Worker(client, "lost").claim_id()

    trial = wait_until(lambda: (t := get_trial(client, trial_id))["state"] == "pending" and t)

    assert trial["error"] == "worker lost" and trial["failure_kind"] == "crash"
    assert trial["worker_id"] is None and trial["lease_expires_at"] is None and trial["attempts"] == 1
    assert get_sweep(client, sweep["id"])["status"] == "running"
    assert Worker(client, "rescuer").claim()["attempt"] == 2  # type: ignore[index]


def test_the_reaper_fails_a_trial_as_worker_lost_once_the_specs_attempts_are_used(client_with):
    # The server has no attempts setting of its own: the spec's max_attempts (1 here) decides.
    client = client_with(lease_seconds=0.3, reap_interval_seconds=0.05)
    sweep = create_sweep(client, grid_spec(values=1, max_attempts=1))
    trial_id = Worker(client, "lost").claim_id()

    trial = wait_until(lambda: (t := get_trial(client, trial_id))["state"] == "failed" and t)

    assert trial["error"] == "worker lost" and trial["failure_kind"] == "crash" and trial["worker_id"] == "lost"
    assert trial["finished_at"] is not None
    assert get_sweep(client, sweep["id"])["status"] == "failed"  # its only trial failed


def test_a_heartbeating_worker_is_never_reaped(client_with):
    # A lease of 1 s, so that a heartbeat held up on a loaded machine still comes in time.
    client = client_with(lease_seconds=1.0, reap_interval_seconds=0.02)
    create_sweep(client, grid_spec(values=1))
    worker = Worker(client, "alive")
    trial_id = worker.claim_id()

    for _ in range(60):  # 3 s: three leases long
        assert worker.heartbeat(trial_id).json() == {"action": "continue"}
        time.sleep(0.05)

    assert get_trial(client, trial_id)["attempts"] == 1
    assert worker.complete(trial_id, val_accuracy=0.5).json()["state"] == "completed"


def test_the_reaper_runs_while_the_app_runs_and_stops_on_shutdown(settings: Settings):
    already = set(reaper_threads())
    app = create_app(settings)
    assert set(reaper_threads()) == already  # built, not started: the lifespan starts it

    with TestClient(app):
        running = [thread for thread in reaper_threads() if thread not in already]
        assert len(running) == 1 and app.state.reaper.running

    assert not running[0].is_alive() and not app.state.reaper.running


def test_two_server_processes_on_one_database_reap_a_lost_lease_once(settings: Settings, make_client: Callable):
    # max_failures 2: a lease counted lost twice would fail the sweep.
    fast = Settings(**{**settings.model_dump(), "lease_seconds": 0.3, "reap_interval_seconds": 0.01})
    first, second = make_client(fast), make_client(fast)
    sweep = create_sweep(first, grid_spec(values=2, max_attempts=1, max_failures=2))
    trial_id = Worker(second, "lost").claim_id()

    wait_until(lambda: get_trial(first, trial_id)["state"] == "failed")
    time.sleep(0.1)  # both reapers make several more passes

    assert get_sweep(second, sweep["id"])["status"] == "running"
    assert get_sweep(first, sweep["id"])["reason"] is None
    assert Worker(first, "next").claim() is not None


@pytest.mark.parametrize("action", ["heartbeat", "metrics"])
def test_calls_on_an_expired_but_unreaped_lease_still_succeed(client_with, action: str):
    client = client_with(lease_seconds=0.05, reap_interval_seconds=3600)
    create_sweep(client, grid_spec(values=1))
    worker = Worker(client, "slow")
    trial_id = worker.claim_id()
    time.sleep(0.1)

    body = {"epoch": 0, "metrics": {"loss": 1.0}} if action == "metrics" else {}
    answer = client.post(f"{API}/trials/{trial_id}/{action}", json={"worker_id": "slow", "lease_token": 1, **body})

    assert answer.status_code == 200 and answer.json() == {"action": "continue"}


def test_a_restarted_server_renews_the_leases_that_ran_out_while_it_was_down(settings: Settings):
    # Workers could not heartbeat during the outage; their trials must not be reaped the moment it ends.
    # A lease of 2 s: the restarted server's first calls must come well within the lease it renewed.
    short = Settings(**{**settings.model_dump(), "lease_seconds": 2.0, "reap_interval_seconds": 0.02})
    with TestClient(create_app(short)) as before:
        create_sweep(before, grid_spec(values=1))
        trial_id = Worker(before, "survivor").claim_id()
    time.sleep(2.2)  # the server is down for longer than a lease

    with TestClient(create_app(short)) as after:
        time.sleep(0.1)  # several reaper passes
        trial = get_trial(after, trial_id)
        assert (trial["state"], trial["worker_id"], trial["attempts"]) == ("running", "survivor", 1)
        worker = Worker(after, "survivor")
        assert worker.heartbeat(trial_id).json() == {"action": "continue"}
        assert worker.complete(trial_id, val_accuracy=0.5).json()["state"] == "completed"

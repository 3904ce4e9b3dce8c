"""Failures: their kind and traceback, which of them are retried, and a sweep's failure budget."""

from __future__ import annotations

import pytest
from api_testing import Worker, create_sweep, get_sweep, get_trial, grid_spec
from fastapi.testclient import TestClient

TRACEBACK = 'Traceback (most recent call last):\n  File "model.py", line 3, in build\nValueError: bad shapes\n'


def test_a_failure_is_stored_with_its_error_kind_and_traceback(client: TestClient):
    create_sweep(client, grid_spec(values=2))
    worker = Worker(client, "w1")
    trial_id = worker.claim_id()

    failed = worker.fail(trial_id, "ValueError: bad shapes", kind="error", traceback=TRACEBACK).json()

    assert failed["state"] == "failed"
    assert (failed["error"], failed["failure_kind"], failed["traceback"]) == ("ValueError: bad shapes", "error",
                                                                               TRACEBACK)
    assert get_trial(client, trial_id)["traceback"] == TRACEBACK


@pytest.mark.parametrize("kind", ["error", "nan", "oom"])
def test_a_failure_not_marked_retryable_fails_for_good_whatever_its_kind(client: TestClient, kind: str):
    create_sweep(client, grid_spec(values=1, max_attempts=5))
    worker = Worker(client, "w1")
    trial_id = worker.claim_id()

    failed = worker.fail(trial_id, f"{kind} happened", kind=kind).json()

    assert failed["state"] == "failed" and failed["failure_kind"] == kind and failed["attempts"] == 1
    assert worker.claim() is None


@pytest.mark.parametrize("kind", ["error", "nan", "oom"])
def test_a_retryable_failure_with_attempts_left_is_pending_again(client: TestClient, kind: str):
    create_sweep(client, grid_spec(values=1, max_attempts=2))
    trial_id = Worker(client, "w1").claim_id()

    requeued = Worker(client, "w1").fail(trial_id, "try again", retryable=True, kind=kind).json()

    assert requeued["state"] == "pending" and requeued["failure_kind"] == kind


def test_a_crash_is_retried_through_the_specs_attempts_even_unmarked(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=1, max_attempts=3))
    trial_id = None
    for attempt in (1, 2, 3):
        worker = Worker(client, f"supervisor-{attempt}")
        assignment = worker.claim()
        assert assignment is not None and assignment["attempt"] == attempt
        trial_id = assignment["trial_id"]
        answer = worker.fail(trial_id, "worker process killed by SIGKILL", kind="crash").json()
        assert answer["state"] == ("failed" if attempt == 3 else "pending")

    trial = get_trial(client, trial_id)  # type: ignore[arg-type]
    assert trial["attempts"] == 3 and trial["failure_kind"] == "crash"
    # Its only trial failed: the sweep failed, naming that trial's error.
    assert get_sweep(client, sweep["id"])["status"] == "failed"
    assert get_sweep(client, sweep["id"])["error"] == "trial 1: worker process killed by SIGKILL"


def test_a_completed_retry_clears_the_earlier_failure(client: TestClient):
    create_sweep(client, grid_spec(values=1))
    worker = Worker(client, "w1")
    trial_id = worker.claim_id()
    worker.fail(trial_id, "killed", kind="crash", traceback="Traceback: ...")
    worker.claim_id()

    done = worker.complete(trial_id, val_accuracy=0.5).json()

    assert (done["error"], done["failure_kind"], done["traceback"]) == (None, None, None)


# -- the failure budget ------------------------------------------------------------------------------


def fail_next(worker: Worker, error: str = "ValueError: bad shapes") -> int:
    trial_id = worker.claim_id()
    assert worker.fail(trial_id, error).status_code == 200
    return trial_id


def test_a_sweep_fails_after_max_failures_consecutive_failed_trials(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=10, max_failures=3))
    worker, busy = Worker(client, "w1"), Worker(client, "busy")
    running = busy.claim_id()
    fail_next(worker)
    fail_next(worker)
    assert get_sweep(client, sweep["id"])["status"] == "running"

    last = fail_next(worker, "ValueError: bad shapes\nmore detail")

    failed = get_sweep(client, sweep["id"])
    assert failed["status"] == "failed" and failed["finished_at"] is not None
    assert failed["reason"] == f"3 trials failed in a row (max_failures is 3); the last, trial {last}: " \
                               f"ValueError: bad shapes"
    assert worker.claim() is None  # no new trials from a failed sweep
    assert busy.heartbeat(running).json() == {"action": "cancel"}
    assert busy.report(running, 0, loss=1.0).json() == {"action": "cancel"}
    assert busy.complete(running, val_accuracy=0.5).json()["state"] == "cancelled"
    assert get_sweep(client, sweep["id"])["status"] == "failed"


def test_a_completed_trial_resets_the_count_of_consecutive_failures(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=10, max_failures=2))
    worker = Worker(client, "w1")
    fail_next(worker)
    worker.complete(worker.claim_id(), val_accuracy=0.5)
    fail_next(worker)
    assert get_sweep(client, sweep["id"])["status"] == "running"

    fail_next(worker)
    assert get_sweep(client, sweep["id"])["status"] == "failed"


def test_retried_failures_do_not_count_towards_the_budget(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=3, max_attempts=5, max_failures=1))
    worker = Worker(client, "w1")
    trial_id = worker.claim_id()
    for _ in range(3):
        worker.fail(trial_id, "flaky", retryable=True)
        assert worker.claim_id() == trial_id
    assert get_sweep(client, sweep["id"])["status"] == "running"


def test_pending_trials_of_a_sweep_that_fails_are_cancelled(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=10, max_attempts=3, max_failures=1))
    flaky, broken = Worker(client, "flaky"), Worker(client, "broken")
    waiting = flaky.claim_id()
    doomed = broken.claim_id()
    flaky.fail(waiting, "retry me", retryable=True)
    assert get_trial(client, waiting)["state"] == "pending"

    broken.fail(doomed, "ValueError: bad shapes")

    assert get_sweep(client, sweep["id"])["status"] == "failed"
    cancelled = get_trial(client, waiting)
    assert cancelled["state"] == "cancelled" and cancelled["finished_at"] is not None
    assert get_sweep(client, sweep["id"])["trial_counts"]["pending"] == 0


def test_a_failure_budget_is_per_sweep(client: TestClient):
    bad = create_sweep(client, grid_spec(name="bad", values=3, max_failures=1))
    good = create_sweep(client, grid_spec(name="good", values=1))
    worker = Worker(client, "w1")
    fail_next(worker)

    assert get_sweep(client, bad["id"])["status"] == "failed"
    assignment = worker.claim()
    assert assignment is not None and assignment["sweep_id"] == good["id"]

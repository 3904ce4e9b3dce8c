"""The repository on its own, without HTTP: leases follow an injected clock."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from api_testing import grid_spec
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api.db import create_tables, make_engine, make_sessions
from api.migrate import upgrade
from api.storage import (LeaseConflictError, LeasePolicy, PlanCache, Repository, SweepNotFoundError, WORKER_LOST,
                            WorkerState)
from sweeper import parse_spec
from sweeper.messages import ClaimRequest, CompleteReport, FailureKind, HeartbeatRequest, SweepStatus, TrialState


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'repo.db'}")
    create_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def repository(engine: Engine, clock: Clock) -> Iterator[Repository]:
    with make_sessions(engine)() as session:
        yield Repository(session, LeasePolicy(lease=timedelta(seconds=60), heartbeat=timedelta(seconds=10)),
                         PlanCache(), clock)


def claim(repository: Repository, worker: str):
    return repository.claim(ClaimRequest(worker_id=worker, host="h"))


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(engine: Engine):
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_transactions_take_the_write_lock_up_front(engine: Engine):
    with Session(engine) as holder, holder.begin():
        holder.connection()  # begins the transaction, before any write
        other = sqlite3.connect(engine.url.database, timeout=0)
        try:
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                other.execute("BEGIN IMMEDIATE")
        finally:
            other.close()


def test_lease_is_renewed_by_heartbeats_and_lost_without_them(repository: Repository, clock: Clock):
    repository.create_sweep(parse_spec(grid_spec(values=1, max_attempts=2)), max_trials=100)
    trial = claim(repository, "w1").trial  # type: ignore[union-attr]
    assert trial.lease_expires_at == clock.now + timedelta(seconds=60)

    clock.advance(50)
    repository.heartbeat(trial.id, HeartbeatRequest(worker_id="w1", lease_token=trial.lease_token))
    clock.advance(50)
    assert claim(repository, "w2") is None  # renewed 50 s ago: still held

    clock.advance(11)
    again = claim(repository, "w2")
    assert again is not None and again.trial.id == trial.id and again.trial.attempts == 2
    assert again.trial.error == WORKER_LOST
    with pytest.raises(LeaseConflictError, match="leased to worker 'w2', not to 'w1'"):
        repository.complete(trial.id, CompleteReport(worker_id="w1", lease_token=trial.lease_token, metrics={}))

    clock.advance(61)
    assert claim(repository, "w3") is None  # out of attempts: failed for good
    lost = repository.get_trial(trial.id).trial
    assert lost.state == TrialState.failed and lost.error == WORKER_LOST
    assert repository.get_sweep(lost.sweep_id).sweep.status == SweepStatus.failed  # its only trial failed


def test_trials_are_generated_on_claim_not_up_front(repository: Repository):
    summary = repository.create_sweep(parse_spec(grid_spec(values=5)), max_trials=100)
    assert repository.list_trials(summary.sweep.id, limit=100, offset=0) == ([], 0)

    claim(repository, "w1")
    trials, count = repository.list_trials(summary.sweep.id, limit=100, offset=0)
    assert count == 1 and trials[0].index == 0
    assert repository.get_sweep(summary.sweep.id).sweep.next_index == 1


def test_unknown_sweep_raises_sweep_not_found(repository: Repository):
    with pytest.raises(SweepNotFoundError, match="sweep 3 not found"):
        repository.get_sweep(3)


def test_one_reaping_pass_counts_every_lost_trial_towards_the_failure_budget(repository: Repository, clock: Clock):
    summary = repository.create_sweep(parse_spec(grid_spec(values=5, max_attempts=1, max_failures=3)), max_trials=100)
    for worker in ("w1", "w2", "w3"):
        claim(repository, worker)
    clock.advance(61)

    assert repository.reap_expired_leases() == 3
    assert repository.reap_expired_leases() == 0

    sweep = repository.get_sweep(summary.sweep.id).sweep
    assert sweep.status == SweepStatus.failed and sweep.consecutive_failures == 3
    assert sweep.status_reason is not None and sweep.status_reason.startswith("3 trials failed in a row")
    assert sweep.status_reason.endswith(WORKER_LOST)


def test_reaping_requeues_within_the_specs_attempts(repository: Repository, clock: Clock):
    repository.create_sweep(parse_spec(grid_spec(values=1, max_attempts=2)), max_trials=100)
    trial_id = claim(repository, "w1").trial.id  # type: ignore[union-attr]
    clock.advance(59)
    assert repository.reap_expired_leases() == 0
    clock.advance(2)

    assert repository.reap_expired_leases() == 1

    trial = repository.get_trial(trial_id).trial
    assert (trial.state, trial.error, trial.failure_kind, trial.worker_id) == (
        TrialState.pending, WORKER_LOST, FailureKind.crash, None)


def test_a_worker_is_lost_once_silent_for_the_lease(repository: Repository, clock: Clock):
    repository.create_sweep(parse_spec(grid_spec(values=1)), max_trials=100)
    trial_id = claim(repository, "w1").trial.id  # type: ignore[union-attr]

    def state() -> tuple[WorkerState, int | None]:
        [status], _ = repository.list_workers(limit=10, offset=0)
        return status.state, status.trial_id

    clock.advance(60)
    assert state() == (WorkerState.busy, trial_id)
    clock.advance(1)
    assert state() == (WorkerState.lost, trial_id)
    repository.heartbeat(trial_id, HeartbeatRequest(worker_id="w1", lease_token=1))
    assert state() == (WorkerState.busy, trial_id)


def test_a_new_sqlite_database_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    # It holds every sweep's spec and history; the default umask would let any local user read it.
    path = tmp_path / "state" / "sweeper.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        upgrade(engine)
        written = [file for file in path.parent.iterdir() if file.name.startswith("sweeper.db")]
        assert path in written
        for file in written:  # the WAL and its index too
            assert stat.S_IMODE(file.stat().st_mode) & 0o077 == 0, (file.name, oct(file.stat().st_mode))
    finally:
        engine.dispose()


def test_an_existing_database_files_mode_is_left_as_the_operator_set_it(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    path.touch(mode=0o640)
    path.chmod(0o640)
    engine = make_engine(f"sqlite:///{path}")
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640

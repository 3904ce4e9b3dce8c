"""The claim path, fast and still exact: its queries never scan the trials table however many trials
have finished, concurrent workers get every configuration once on SQLite and PostgreSQL, and one
engine's transactions queue on a lock that is always given back."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from api_testing import grid_spec
from postgres_testing import isolated_schema
from sqlalchemy import Engine, event, insert, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from api import db
from api.db import make_engine, make_sessions
from api.migrate import upgrade
from api.models import TrialRow
from api.storage import LeasePolicy, PlanCache, Repository
from api.claims.statements import TRIALS, TrialRecord
from sweeper import parse_spec
from sweeper.messages import (Action, ClaimRequest, CompleteReport, Directive, FailReport, HeartbeatRequest,
                              MetricsReport, SweepStatus, TrialState)

FINISHED = 2_000


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


POLICY = LeasePolicy(lease=timedelta(seconds=60), heartbeat=timedelta(seconds=10))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'claims.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def repositories(engine: Engine, clock: Clock) -> Callable[[], Repository]:
    """A fresh repository (and session) per call, as the app makes one per request, sharing one plan cache."""
    plans = PlanCache()
    return lambda: Repository(make_sessions(engine)(), POLICY, plans, clock)


def statements_run(engine: Engine, work: Any) -> list[tuple[str, Any]]:
    """Every SELECT, INSERT, UPDATE and DELETE the engine ran while `work()` ran, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(connection: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in ("SELECT", "INSERT", "UPDATE", "DELETE"):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        work()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return seen


def test_claims_and_reports_never_scan_the_trials_table(engine: Engine):
    clock = Clock()
    repository = repositories(engine, clock)
    spec = grid_spec(values=1, max_attempts=3, hparams={"units": {"type": "discrete", "values": list(range(100))},
                                                        "depth": {"type": "discrete", "values": list(range(100))}})
    sweep_id = repository().create_sweep(parse_spec(spec), max_trials=100_000).sweep.id
    with Session(engine) as session, session.begin():
        # A sweep well into its life: thousands of finished trials that no claim should ever read.
        session.execute(insert(TrialRow), [
            {"sweep_id": sweep_id, "index": index, "state": TrialState.completed, "hparams": {"units": 0, "depth": index},
             "metrics": {"val_accuracy": 0.5}, "attempts": 1, "worker_id": "old", "created_at": clock.now}
            for index in range(FINISHED)])
        session.execute(text("UPDATE sweeps SET next_index = :n WHERE id = :id"), {"n": FINISHED, "id": sweep_id})

    def worker_protocol() -> None:
        first = repository().claim(ClaimRequest(worker_id="w1", host="h"))  # generates a trial
        assert first is not None and first.trial.index == FINISHED
        again = repository().claim(ClaimRequest(worker_id="w1", host="h"))  # the one it holds
        assert again is not None and again.trial.id == first.trial.id
        token = again.trial.lease_token
        repository().heartbeat(first.trial.id, HeartbeatRequest(worker_id="w1", lease_token=token))
        for _ in range(2):  # stored, then replaced
            repository().report_metrics(first.trial.id, MetricsReport(worker_id="w1", lease_token=token, epoch=0,
                                                                      metrics={"loss": 1.0}))
        repository().fail(first.trial.id, FailReport(worker_id="w1", lease_token=token, error="flaky", retryable=True))
        retried = repository().claim(ClaimRequest(worker_id="w2", host="h"))  # the pending one
        assert retried is not None and retried.trial.id == first.trial.id
        clock.now += timedelta(seconds=61)
        taken_over = repository().claim(ClaimRequest(worker_id="w3", host="h"))  # reaps w2's lease
        assert taken_over is not None and taken_over.trial.id == first.trial.id
        repository().complete(first.trial.id, CompleteReport(worker_id="w3", lease_token=taken_over.trial.lease_token,
                                                             metrics={"val_accuracy": 1}))

    statements = statements_run(engine, worker_protocol)

    plans: dict[str, list[str]] = {}
    with sqlite3.connect(engine.url.database) as explainer:  # type: ignore[arg-type]
        for statement, parameters in statements:
            plans[statement] = [row[3] for row in explainer.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
    scans = {statement: plan for statement, plan in plans.items()
             if any(step.startswith(("SCAN trials", "SCAN trial_epochs")) for step in plan)}
    assert len(plans) >= 10  # the protocol's statements were seen at all
    assert scans == {}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_workers_get_every_configuration_once_and_every_retry_once(
        backend: str, tmp_path: Path):
    with contextlib.ExitStack() as stack:
        url = (f"sqlite:///{tmp_path / 'concurrent.db'}" if backend == "sqlite"
               else stack.enter_context(isolated_schema()))
        engine = make_engine(url)
        stack.callback(engine.dispose)
        upgrade(engine)
        fresh = repositories(engine, Clock())
        sweep_id = fresh().create_sweep(parse_spec(grid_spec(values=60, max_attempts=2)), max_trials=1000).sweep.id
        claims: list[tuple[str, int, int]] = []
        errors: list[BaseException] = []

        def work(worker: str) -> None:
            try:
                while (claimed := fresh().claim(ClaimRequest(worker_id=worker, host="h"))) is not None:
                    trial = claimed.trial
                    claims.append((worker, trial.id, trial.attempts))
                    token = trial.lease_token
                    fresh().heartbeat(trial.id, HeartbeatRequest(worker_id=worker, lease_token=token))
                    if trial.index % 5 == 0 and trial.attempts == 1:  # every fifth fails once, and is retried
                        fresh().fail(trial.id, FailReport(worker_id=worker, lease_token=token, error="flaky",
                                                          retryable=True))
                    else:
                        fresh().complete(trial.id, CompleteReport(worker_id=worker, lease_token=token,
                                                                  metrics={"val_accuracy": 1}))
            except BaseException as error:  # noqa: BLE001 - the test asserts there is none
                errors.append(error)

        threads = [threading.Thread(target=work, args=(f"w{number}",)) for number in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

        assert errors == []
        assert sorted((trial_id, attempt) for _, trial_id, attempt in claims) == sorted(
            {(trial_id, attempt) for _, trial_id, attempt in claims})  # no attempt was handed out twice
        trials, count = fresh().list_trials(sweep_id, limit=100, offset=0)
        assert count == 60 and sorted(trial.index for trial in trials) == list(range(60))
        assert all(trial.state == TrialState.completed for trial in trials)
        assert sorted(trial.attempts for trial in trials) == [1] * 48 + [2] * 12
        assert len(claims) == 72
        assert fresh().get_sweep(sweep_id).sweep.status == SweepStatus.completed


def held_sweep_row(engine: Engine, sweep_id: int, call: Callable[[], Any]) -> tuple[bool, Any]:
    """Whether `call` answered within 10 s while another transaction held the sweep's row, and its answer."""
    answers: list[Any] = []
    with engine.connect() as holder, holder.begin():
        holder.execute(text("SELECT id FROM sweeps WHERE id = :sweep FOR UPDATE"), {"sweep": sweep_id})
        caller = threading.Thread(target=lambda: answers.append(call()))
        caller.start()
        caller.join(10)
        answered_while_held = bool(answers)
    caller.join(30)
    return answered_while_held, answers[0] if answers else None


@pytest.mark.parametrize("stopping", [None, {"rule": "median", "min_epochs": 1}])
def test_heartbeats_and_unjudged_reports_do_not_wait_for_their_sweeps_row_on_postgresql(stopping):
    # Heartbeats and the epoch reports no rule judges only renew their own trial's lease: while another
    # transaction holds the sweep's row (a claim generating the sweep's next trial, a report ending a trial),
    # the fleet's calls go on rather than queue behind it (and cannot deadlock with it). A report that a
    # stopping rule judges among the sweep's others waits its turn.
    with isolated_schema() as url:
        engine = make_engine(url)
        try:
            upgrade(engine)
            fresh = repositories(engine, Clock())
            spec = grid_spec(values=3, **({"stopping": stopping} if stopping else {}))
            sweep_id = fresh().create_sweep(parse_spec(spec), max_trials=10).sweep.id
            trial = fresh().claim(ClaimRequest(worker_id="w1", host="h")).trial
            beat = HeartbeatRequest(worker_id="w1", lease_token=trial.lease_token)
            epoch = MetricsReport(worker_id="w1", lease_token=trial.lease_token, epoch=0,
                                  metrics={"val_accuracy": 0.5})

            heartbeat = held_sweep_row(engine, sweep_id, lambda: fresh().heartbeat(trial.id, beat))
            report = held_sweep_row(engine, sweep_id, lambda: fresh().report_metrics(trial.id, epoch))
        finally:
            engine.dispose()

    assert heartbeat == (True, Directive(action=Action.continue_)), "the heartbeat waited for its sweep's row"
    assert report == (stopping is None, Directive(action=Action.continue_))


def test_a_trial_record_has_exactly_the_columns_of_a_trial_row():
    assert [field.name for field in dataclasses.fields(TrialRecord)] == [column.key for column in TRIALS.c]


def test_a_transaction_waiting_past_the_busy_timeout_for_another_of_its_engine_fails_as_database_is_locked(
        engine: Engine, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 50)
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with Session(engine) as session, session.begin():
            session.connection()
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        with pytest.raises(OperationalError, match="database is locked"), Session(engine) as session, session.begin():
            session.connection()
    finally:
        release.set()
        holder.join(10)


@pytest.mark.parametrize("ending", ["commit", "rollback", "a failed statement", "closing the session"])
def test_the_queue_is_free_again_after_a_transaction_ends_however_it_ends(engine: Engine, ending: str,
                                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 50)  # a queue left taken fails the next transaction within 50 ms
    with Session(engine) as session:
        transaction = session.begin()
        session.execute(text("SELECT 1"))
        if ending == "commit":
            transaction.commit()
        elif ending == "rollback":
            transaction.rollback()
        elif ending == "a failed statement":
            with pytest.raises(OperationalError, match="no such table"):
                session.execute(text("SELECT * FROM no_such_table"))
            transaction.rollback()
    # "closing the session": the with block closed it with the transaction still open.

    # From another thread too: the queue is not tied to the thread that took it.
    errors: list[BaseException] = []
    other = threading.Thread(target=_one_transaction, args=(engine, errors))
    other.start()
    other.join(10)
    assert errors == []
    _one_transaction(engine, errors)
    assert errors == []


def _one_transaction(engine: Engine, errors: list[BaseException]) -> None:
    try:
        with Session(engine) as session, session.begin():
            session.execute(text("SELECT 1"))
    except BaseException as error:  # noqa: BLE001 - the test asserts there is none
        errors.append(error)

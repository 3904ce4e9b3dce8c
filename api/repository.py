"""Every read and write of sweeps, trials and workers, one transaction per public method; no HTTP in here.

Claiming, reaping and every report are compare-and-set inside one transaction: on SQLite every
transaction begins with BEGIN IMMEDIATE (see api.db), so two claims never see the same pending trial or
the same next index, and two server processes never reap the same lease twice; on other databases the
rows read are locked FOR UPDATE (SKIP LOCKED for pending trials and expired leases).

The worker protocol's hot path (claim, heartbeat, metrics, complete) runs prebuilt Core statements
(api.trial_statements) and returns plain records; the rarer paths (fail, release, reaping, sweep
control) and every read go through the ORM.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Row, exists, func, select
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from sweeper import Objective, SpecError, Strategy, SweeperError, SweepSpec, make_strategy, parse_spec
from sweeper._errors import UnknownTrialError
from sweeper.messages import (ClaimRequest, CompleteReport, Directive, FailReport, FailureKind, HeartbeatRequest,
                              MetricsReport, ReleaseReport, SweepStatus, TrialState)

from api import lifecycle
from api import trial_statements as sql
from api.lifecycle import ENDED_EARLY, OPEN, Caller, SweepEvent, TrialEvent, TrialLife
from api.models import Base, SweepRow, TrialEpochRow, TrialRow, WorkerRow, utcnow
from api.queries import (ObjectivePoint, SortOrder, best_trials, objective_of, objective_points, ordered_trials,
                         stored_space_size, trial_stats, worker_state_is)

logger = logging.getLogger(__name__)

WORKER_LOST = "worker lost"
"""The error of a trial whose worker stopped renewing its lease."""

CANCELLED_ON_REQUEST = "cancelled on request"
"""The reason of a sweep cancelled through the API."""

_MAX_ROW_ID = 2**63 - 1  # the largest id a database integer column holds
_ACTIVE = (TrialState.pending, TrialState.running)


class SweepNotFoundError(SweeperError):
    def __init__(self, sweep_id: int):
        super().__init__(f"sweep {sweep_id} not found")
        self.sweep_id = sweep_id


class TrialNotFoundError(UnknownTrialError):
    def __init__(self, trial_id: int):
        super().__init__(f"trial {trial_id} not found")
        self.trial_id = trial_id


class LeaseConflictError(SweeperError):
    """A worker called on a trial whose current lease it does not hold (a stale token); nothing was changed."""


class SweepStateError(SweeperError):
    """A control request (pause, resume, cancel) that the sweep's current status does not allow."""


@dataclass(frozen=True)
class SweepPlan:
    """A sweep's parsed spec and its (stateless) strategy."""

    spec: SweepSpec
    strategy: Strategy
    stored_spec: dict[str, Any]
    """The spec as stored (SweepRow.spec), so a claim needs not read and decode it again; never modified."""


class PlanCache:
    """Parsed specs and strategies by sweep id, shared by all requests of one app; thread-safe.

    A sweep's spec never changes, so an entry is never stale; the cache only saves re-parsing the
    spec and rebuilding the strategy on every claim.
    """

    def __init__(self, size: int = 4096):
        self._size = size
        self._plans: OrderedDict[int, SweepPlan] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sweep: SweepRow) -> SweepPlan:
        return self.lookup(sweep.id, lambda: sweep.spec)

    def lookup(self, sweep_id: int, stored_spec: Callable[[], dict[str, Any]]) -> SweepPlan:
        """The sweep's plan; `stored_spec()` (its SweepRow.spec) is only called when it is not cached."""
        with self._lock:
            plan = self._plans.get(sweep_id)
            if plan is not None:
                self._plans.move_to_end(sweep_id)
                return plan
        stored = stored_spec()
        spec = parse_spec(stored)
        plan = SweepPlan(spec, make_strategy(spec), stored)
        self.put(sweep_id, plan)
        return plan

    def put(self, sweep_id: int, plan: SweepPlan) -> None:
        with self._lock:
            self._plans[sweep_id] = plan
            self._plans.move_to_end(sweep_id)
            while len(self._plans) > self._size:
                self._plans.popitem(last=False)


@dataclass(frozen=True)
class LeasePolicy:
    """The server's side of the lease; how many attempts a trial gets is its sweep's spec's business."""

    lease: timedelta
    """How long a claimed trial stays with its worker without a call; also how long until a silent worker is lost."""
    heartbeat: timedelta
    """How often workers are told to call, well inside the lease."""


class WorkerState(StrEnum):
    idle = "idle"
    """Seen within the lease TTL, holding no trial."""
    busy = "busy"
    """Seen within the lease TTL, running a trial."""
    lost = "lost"
    """Silent for longer than the lease TTL."""


@dataclass(frozen=True)
class WorkerStatus:
    worker: WorkerRow
    state: WorkerState
    trial_id: int | None
    """The running trial the worker holds, if any (also while it is lost, until the lease is reaped)."""


@dataclass(frozen=True)
class SweepSummary:
    sweep: SweepRow
    trial_counts: dict[TrialState, int]
    best_trial: TrialRow | None
    space_size: int | None
    """Distinct configurations in the search space (the grid's size); None when intervals make it endless."""
    started_at: datetime | None = None
    """When its first trial started; None before any did."""


@dataclass(frozen=True)
class ObjectiveSeries:
    """A sweep's objective and every completed trial's value of it, in index order."""

    objective: Objective
    points: list[ObjectivePoint]


@dataclass(frozen=True)
class Claimed:
    """A trial just claimed (or claimed again) by a worker, and its sweep's plan (its spec, parsed and stored)."""

    trial: sql.TrialRecord
    plan: SweepPlan


@dataclass(frozen=True)
class TrialHistory:
    trial: TrialRow
    epochs: list[TrialEpochRow]


class Repository:
    """Sweeps and trials in the database; one per request (it wraps that request's session)."""

    def __init__(self, session: Session, policy: LeasePolicy, plans: PlanCache,
                 clock: Callable[[], datetime] = utcnow):
        self._session = session
        self._policy = policy
        self._plans = plans
        self._clock = clock
        self._probed_in: SessionTransaction | None = None
        self._seen_later: dict[str, dict[str, Any]] | None = None
        """Inside batch(): the workers seen so far and their latest values, written when it ends."""

    # -- sweeps ------------------------------------------------------------------------------------

    def create_sweep(self, spec: SweepSpec, *, max_trials: int,
                     on_created: Callable[[int], None] | None = None) -> SweepSummary:
        """Store a new running sweep; its trials are generated one by one as workers claim them.

        `on_created(sweep_id)` runs inside the transaction, so if it raises, no sweep is left behind.
        """
        strategy = make_strategy(spec)
        if strategy.total > max_trials:
            raise SpecError([(("search", "max_trials"),
                              f"a sweep may have at most {max_trials} trials on this server, but this one has "
                              f"{strategy.total}; set search.max_trials to at most {max_trials}")])
        with self._session.begin():
            stored = spec.to_json()
            sweep = SweepRow(name=spec.name, status=SweepStatus.running, spec=stored,
                             total_trials=strategy.total, next_index=0, created_at=self._clock())
            self._session.add(sweep)
            self._session.flush()
            self._plans.put(sweep.id, SweepPlan(spec, strategy, stored))
            if on_created is not None:
                on_created(sweep.id)
        return SweepSummary(sweep, dict.fromkeys(TrialState, 0), None, strategy.size)

    def list_sweeps(self, *, limit: int, offset: int, status: SweepStatus | None = None,
                    ) -> tuple[list[SweepSummary], int]:
        """A page of sweeps (of one status, if given), newest first, and how many there are in all.

        A fixed number of statements whatever the page size: none per sweep.
        """
        with self._session.begin():
            matching = select(SweepRow) if status is None else select(SweepRow).where(SweepRow.status == status)
            count = self._session.scalar(select(func.count()).select_from(matching.subquery())) or 0
            sweeps = list(self._session.scalars(matching.order_by(SweepRow.id.desc()).limit(limit).offset(offset)))
            return self._summaries(sweeps), count

    def get_sweep(self, sweep_id: int) -> SweepSummary:
        with self._session.begin():
            return self._summary(self._sweep(sweep_id))

    def list_trials(self, sweep_id: int, *, limit: int, offset: int, state: TrialState | None = None,
                    sort: str = "index", order: SortOrder | None = None) -> tuple[list[TrialRow], int]:
        """A page of a sweep's trials (of one state, if given), by `sort`, and how many there are.

        `sort` is index (search order), objective (best first by default), metrics.<name> or
        hparams.<name>; trials without the value come last. See api.queries.ordered_trials.
        """
        with self._session.begin():
            sweep = self._sweep(sweep_id)
            matching = select(TrialRow).where(TrialRow.sweep_id == sweep_id)
            if state is not None:
                matching = matching.where(TrialRow.state == state)
            count = self._session.scalar(select(func.count()).select_from(matching.subquery())) or 0
            trials = list(self._session.scalars(
                ordered_trials(matching, sweep, sort, order).limit(limit).offset(offset)))
            return trials, count

    def best_trial(self, sweep_id: int) -> TrialRow | None:
        """The sweep's completed trial with the best objective so far (the earliest wins a tie), if any."""
        with self._session.begin():
            sweep = self._sweep(sweep_id)
            return best_trials(self._session, [sweep]).get(sweep.id)

    def objective(self, sweep_id: int) -> ObjectiveSeries:
        """The sweep's objective and each completed trial's value of it, in index order."""
        with self._session.begin():
            sweep = self._sweep(sweep_id)
            return ObjectiveSeries(objective_of(sweep), objective_points(self._session, sweep))

    def get_trial(self, trial_id: int) -> TrialHistory:
        with self._session.begin():
            trial = self._trial(trial_id)
            epochs = list(self._session.scalars(
                select(TrialEpochRow).where(TrialEpochRow.trial_id == trial_id).order_by(TrialEpochRow.epoch)))
            return TrialHistory(trial, epochs)

    # -- the worker protocol -----------------------------------------------------------------------

    def claim(self, request: ClaimRequest) -> Claimed | None:
        """Give the worker a trial to run, or None when there is no work.

        In order: reap expired leases; hand a worker the trial it already holds (claiming is
        idempotent, so a worker restarted under the same id resumes its own trial first); else the
        oldest pending trial of a running sweep; else generate the next trial of the oldest running
        sweep that has some left. The worker is recorded as seen, with its host and GPU.
        """
        with self._transaction():
            connection = self._session.connection()
            now = self._clock()
            self._seen(request.worker_id, now, claim=request, connection=connection)
            # Reaping goes through the ORM (it is rare, and shared with the reaper); its changes are
            # flushed before the Core statements below read the same rows.
            if self._lease_expired(connection, now):
                if self._reap_expired_leases(now):
                    self._complete_finished_sweeps(now)
                self._session.flush()
            trial = (self._held_by(connection, request.worker_id, now)
                     or self._next_pending_trial(connection, request.worker_id, now)
                     or self._generate_next_trial(connection, request.worker_id, now))
            return None if trial is None else self._claimed(connection, trial)

    def heartbeat(self, trial_id: int, request: HeartbeatRequest) -> Directive:
        """Extend the worker's lease on its trial; the answer says "cancel" once its sweep has ended."""
        with self._session.begin():
            connection = self._session.connection()
            _, step = self._lease_holder(connection, trial_id, TrialEvent.heartbeat,
                                         Caller(request.worker_id, request.lease_token))
            now = self._clock()
            self._seen(request.worker_id, now, connection=connection)
            self._update_trial(connection, trial_id, lease_expires_at=now + self._policy.lease)
            return Directive(action=step.action)

    def report_metrics(self, trial_id: int, report: MetricsReport) -> Directive:
        """Store one epoch's metrics and extend the lease.

        Stored once per (trial, epoch): a trial resumed from a checkpoint reports its later epochs again,
        and a repeated epoch replaces the earlier report.
        """
        with self._session.begin():
            connection = self._session.connection()
            _, step = self._lease_holder(connection, trial_id, TrialEvent.report,
                                         Caller(report.worker_id, report.lease_token))
            now = self._clock()
            self._seen(report.worker_id, now, connection=connection)
            values = {"metrics": _finite(report.metrics), "reported_at": now}
            row_id = connection.execute(sql.EPOCH_ID, {"trial": trial_id, "epoch": report.epoch}).scalar()
            if row_id is None:
                connection.execute(sql.INSERT_EPOCH, {"trial_id": trial_id, "epoch": report.epoch, **values})
            else:
                connection.execute(sql.UPDATE_EPOCH, {"row": row_id, **values})
                self._loaded_copy_takes(TrialEpochRow, row_id, values)
            self._update_trial(connection, trial_id, lease_expires_at=now + self._policy.lease)
            return Directive(action=step.action)

    def complete(self, trial_id: int, report: CompleteReport) -> sql.TrialRecord:
        """Record the final metrics and end the lease: completed, or cancelled if its sweep has ended.

        The same report again (a retry after a lost answer, same token) changes nothing and gets the trial as stored.
        """
        with self._transaction():
            connection = self._session.connection()
            held, step = self._lease_holder(connection, trial_id, TrialEvent.complete,
                                            Caller(report.worker_id, report.lease_token))
            if step.repeated:
                return sql.trial_record(held)
            now = self._clock()
            self._seen(report.worker_id, now, connection=connection)
            # Kept also for a cancelled trial: they are what it reached before it was stopped.
            changes: dict[str, Any] = {"state": step.trial.state, "lease_end": step.trial.lease_end,
                                       "metrics": _finite(report.metrics), "lease_expires_at": None,
                                       "finished_at": now}
            if not step.succeeded:
                self._update_trial(connection, trial_id, **changes)
                return sql.trial_record(held, **changes)
            # An earlier attempt's failure no longer describes a trial that succeeded.
            changes.update(error=None, failure_kind=None, traceback=None)
            self._update_trial(connection, trial_id, **changes)
            if held.sweep_consecutive_failures:
                self._update_sweep(connection, held.sweep_id, consecutive_failures=0)
            if held.sweep_next_index >= held.sweep_total_trials:  # its last trials: it may be done now
                if connection.execute(sql.FINISH_SWEEP, {"sweep": held.sweep_id, "now": now}).rowcount:
                    self._loaded_copy_takes(SweepRow, held.sweep_id,
                                            {"status": SweepStatus.completed, "finished_at": now})
            return sql.trial_record(held, **changes)

    def fail(self, trial_id: int, report: FailReport) -> TrialRow:
        """Record a failure with its kind and traceback.

        A retryable failure, or a crash (the worker process died: nothing says the configuration is
        at fault), goes back to pending while the sweep's max_attempts allow; anything else (an error,
        NaN, out of memory) fails for good and counts towards the sweep's max_failures.
        """
        with self._session.begin():
            trial, sweep = self._held_trial(trial_id)
            step = self._apply(trial, sweep, TrialEvent.fail, Caller(report.worker_id, report.lease_token),
                               retry=report.retryable or report.kind in _RETRIED_KINDS)
            if step.repeated:
                return trial
            now = self._clock()
            self._seen(report.worker_id, now)
            trial.error, trial.failure_kind, trial.traceback = report.error, report.kind, report.traceback
            self._end_attempt(trial, sweep, step, now)
            self._complete_finished_sweeps(now, sweep_id=trial.sweep_id)
            return trial

    def release(self, trial_id: int, report: ReleaseReport) -> TrialRow:
        """Take a trial back unfinished (its worker is shutting down): pending again for any worker.

        The attempt its claim counted is given back, since the trial did not fail; its per-epoch
        history stays, and the worker that resumes it from its checkpoint reports the later epochs.
        A trial of a sweep that has ended is cancelled instead.
        """
        with self._session.begin():
            trial, sweep = self._held_trial(trial_id)
            step = self._apply(trial, sweep, TrialEvent.release, Caller(report.worker_id, report.lease_token))
            if step.repeated:
                return trial
            now = self._clock()
            self._seen(report.worker_id, now)
            logger.info("trial %d released by worker %r after %d epoch(s): %s", trial.id, report.worker_id,
                        report.epochs_done, _first_line(report.reason, "no reason given"))
            _take(trial, step.trial)
            trial.lease_expires_at = None
            if trial.state.finished:
                trial.finished_at = now
            return trial

    def reap_expired_leases(self) -> int:
        """Requeue or fail every running trial whose lease has expired; how many there were.

        Run periodically by the app (api.reaper) and at every claim; safe with several server
        processes on one database, since each reap is one locked transaction.
        """
        with self._session.begin():
            now = self._clock()
            reaped = self._reap_expired_leases(now)
            if reaped:
                self._complete_finished_sweeps(now)
            return reaped

    def renew_running_leases(self) -> int:
        """Give every running trial a full lease from now (never a shorter one); how many there were.

        Run when a server starts: while it was down, workers could not heartbeat, and their leases
        ran out through no fault of theirs. Without this, a restart after an outage longer than a
        lease would reap every running trial at once, costing each an attempt and its worker the
        work since its last checkpoint. A worker that really died is reaped one lease later.
        """
        with self._session.begin():
            renewed = self._clock() + self._policy.lease
            running = self._session.scalars(select(TrialRow).where(TrialRow.state == TrialState.running)).all()
            for trial in running:
                if trial.lease_expires_at is None or trial.lease_expires_at < renewed:
                    trial.lease_expires_at = renewed
            return len(running)

    # -- sweep control -----------------------------------------------------------------------------

    def pause_sweep(self, sweep_id: int) -> SweepSummary:
        """No new trials are claimed from the sweep; its running trials finish normally."""
        with self._session.begin():
            sweep = self._sweep(sweep_id, lock=True)
            sweep.status = _sweep_after(sweep, SweepEvent.pause)
            return self._summary(sweep)

    def resume_sweep(self, sweep_id: int) -> SweepSummary:
        """A paused sweep runs again: its pending trials and the rest of its search are claimed."""
        with self._session.begin():
            sweep = self._sweep(sweep_id, lock=True)
            sweep.status = _sweep_after(sweep, SweepEvent.resume)
            return self._summary(sweep)

    def cancel_sweep(self, sweep_id: int) -> SweepSummary:
        """End the sweep: pending trials are cancelled, running ones are told to cancel at their next call."""
        with self._session.begin():
            sweep = self._sweep(sweep_id, lock=True)
            self._end_sweep(sweep, SweepEvent.cancel, CANCELLED_ON_REQUEST, self._clock())
            return self._summary(sweep)

    # -- workers -----------------------------------------------------------------------------------

    def list_workers(self, *, limit: int, offset: int, state: WorkerState | None = None,
                     ) -> tuple[list[WorkerStatus], int]:
        """A page of the workers ever seen (in one state, if given), by id, each with its state now, and how
        many there are."""
        with self._session.begin():
            now = self._clock()
            matching = select(WorkerRow)
            if state is not None:
                matching = matching.where(worker_state_is(state, now - self._policy.lease))
            count = self._session.scalar(select(func.count()).select_from(matching.subquery())) or 0
            workers = list(self._session.scalars(matching.order_by(WorkerRow.id).limit(limit).offset(offset)))
            held: dict[str, int] = {}
            for worker_id, trial_id in self._session.execute(
                    select(TrialRow.worker_id, TrialRow.id)
                    .where(TrialRow.state == TrialState.running, TrialRow.worker_id.in_([w.id for w in workers]))
                    .order_by(TrialRow.id.desc())):
                held[worker_id] = trial_id  # descending, so the oldest held trial wins
            return [WorkerStatus(worker, self._worker_state(worker, held.get(worker.id), now), held.get(worker.id))
                    for worker in workers], count

    # -- helpers (inside a transaction) ------------------------------------------------------------

    def _summary(self, sweep: SweepRow) -> SweepSummary:
        return self._summaries([sweep])[0]

    def _summaries(self, sweeps: list[SweepRow]) -> list[SweepSummary]:
        """Summaries of many sweeps in two statements (plus one per distinct objective), none per sweep."""
        stats = trial_stats(self._session, (sweep.id for sweep in sweeps))
        best = best_trials(self._session, sweeps)
        return [SweepSummary(sweep, stats[sweep.id].counts, best.get(sweep.id), self._space_size(sweep),
                             stats[sweep.id].started_at) for sweep in sweeps]

    def _space_size(self, sweep: SweepRow) -> int | None:
        # Derived from the spec, never stored: the plan cache parses each sweep's spec once per process.
        try:
            return self._plans.get(sweep).strategy.size
        except SweeperError:
            # The spec no longer parses as a whole (its model's plugin is gone): reads must still answer.
            return stored_space_size(sweep.spec)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for many calls of the worker protocol (api.dispatch runs claims and completions so).

        The workers they name are recorded as seen once, at the end, in a few statements for the whole
        batch rather than one or two per call.
        """
        self._seen_later = {}
        try:
            with self._session.begin():
                yield
                self._write_seen(self._session.connection(), self._seen_later)
        finally:
            self._seen_later = None

    def _write_seen(self, connection: Connection, seen: dict[str, dict[str, Any]]) -> None:
        """Each worker's latest values: an UPDATE for the known ones, an INSERT for new ones, grouped
        by the columns they set (executemany needs the same keys in every row)."""
        if not seen:
            return
        known = set(connection.execute(sql.KNOWN_WORKERS, {"workers": list(seen)}).scalars())
        updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        inserts: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for worker_id, values in seen.items():
            if worker_id in known:
                changes = {name: value for name, value in values.items() if name != "first_seen_at"}
                updates.setdefault(tuple(changes), []).append({"worker": worker_id, **changes})
                self._loaded_copy_takes(WorkerRow, worker_id, changes)
            else:
                inserts.setdefault(tuple(values), []).append({"id": worker_id, **values})
        for rows in updates.values():
            connection.execute(sql.UPDATE_WORKER, rows)
        for rows in inserts.values():
            connection.execute(sql.INSERT_WORKER, rows)

    def _lease_expired(self, connection: Connection, now: datetime) -> bool:
        """Whether any lease has expired, asked once per transaction: a batch of claims reaps once, first."""
        transaction = self._session.get_transaction()
        if transaction is self._probed_in:
            return False
        self._probed_in = transaction
        return connection.execute(sql.EXPIRED_LEASE, {"now": now}).first() is not None

    def _transaction(self) -> AbstractContextManager[Any]:
        """A transaction of its own, or the one the caller already opened: a batch of claims and completions
        (api.dispatch) runs many calls in one transaction, and commits or rolls back them all."""
        return nullcontext() if self._session.in_transaction() else self._session.begin()

    def _update_trial(self, connection: Connection, trial_id: int, **values: Any) -> None:
        connection.execute(sql.UPDATE_TRIAL, {"trial": trial_id, **values})
        self._loaded_copy_takes(TrialRow, trial_id, values)

    def _update_sweep(self, connection: Connection, sweep_id: int, **values: Any) -> None:
        connection.execute(sql.UPDATE_SWEEP, {"sweep": sweep_id, **values})
        self._loaded_copy_takes(SweepRow, sweep_id, values)

    def _loaded_copy_takes(self, row_class: type[Base], key: Any, values: Mapping[str, Any]) -> None:
        """A row this session loaded earlier takes the values a Core statement just wrote to the database.

        Core statements bypass the session's identity map: without this, a Repository used for several
        calls (a script, a test) would be handed its stale copy by the ORM reads of a later call.
        """
        if not self._session.identity_map:  # the usual case: one Repository per request
            return
        loaded = self._session.identity_map.get(identity_key(row_class, key))
        if loaded is not None:
            for name, value in values.items():
                set_committed_value(loaded, name, value)

    def _claimed(self, connection: Connection, trial: sql.TrialRecord) -> Claimed:
        return Claimed(trial, self._plan(connection, trial.sweep_id))

    def _plan(self, connection: Connection, sweep_id: int) -> SweepPlan:
        """The sweep's plan, from the cache; its spec is read from the database on a miss only."""
        return self._plans.lookup(
            sweep_id, lambda: connection.execute(sql.SWEEP_SPEC, {"sweep": sweep_id}).scalar_one())

    def _sweep(self, sweep_id: int, *, lock: bool = False) -> SweepRow:
        """The sweep; `lock` when its status or counters are about to change (FOR UPDATE beyond SQLite)."""
        sweep = self._session.get(SweepRow, sweep_id, with_for_update=lock or None, populate_existing=lock) \
            if _is_row_id(sweep_id) else None
        if sweep is None:
            raise SweepNotFoundError(sweep_id)
        return sweep

    def _trial(self, trial_id: int, *, lock: bool = False) -> TrialRow:
        trial = self._session.get(TrialRow, trial_id, with_for_update=lock or None, populate_existing=lock) \
            if _is_row_id(trial_id) else None
        if trial is None:
            raise TrialNotFoundError(trial_id)
        return trial

    def _seen(self, worker_id: str, now: datetime, claim: ClaimRequest | None = None,
              connection: Connection | None = None) -> None:
        """Record that the worker called now; a claim also says where it runs.

        One UPDATE for a worker seen before (every call but its first), an INSERT for a new one.
        """
        values: dict[str, Any] = {"last_seen_at": now}
        if claim is not None:
            values.update(host=claim.host, gpu=claim.gpu)
        if self._seen_later is not None:
            self._seen_later.setdefault(worker_id, {"first_seen_at": now}).update(values)
            return
        connection = connection or self._session.connection()
        if connection.execute(sql.UPDATE_WORKER, {"worker": worker_id, **values}).rowcount == 0:
            connection.execute(sql.INSERT_WORKER, {"id": worker_id, "first_seen_at": now, **values})
        else:
            self._loaded_copy_takes(WorkerRow, worker_id, values)

    def _worker_state(self, worker: WorkerRow, trial_id: int | None, now: datetime) -> WorkerState:
        if worker.last_seen_at + self._policy.lease < now:
            return WorkerState.lost
        return WorkerState.idle if trial_id is None else WorkerState.busy

    def _held_by(self, connection: Connection, worker_id: str, now: datetime) -> sql.TrialRecord | None:
        """The running trial this worker already holds, its lease renewed, if its sweep goes on.

        A held trial whose sweep ended while its worker was away (restarting, say) is cancelled here:
        the worker must not start it again.
        """
        for row in connection.execute(sql.HELD_BY, {"worker": worker_id}).all():
            step = lifecycle.apply(_life(row), TrialEvent.reclaim, sweep=row.sweep_status,
                                   caller=Caller(worker_id, row.lease_token))
            if step.trial.state != TrialState.running:
                self._update_trial(connection, row.id, state=step.trial.state, lease_end=step.trial.lease_end,
                                   lease_expires_at=None, finished_at=now)
                continue
            # A new token: whatever process used this worker id before is fenced off from now on.
            renewed = {"lease_token": step.trial.lease_token, "lease_expires_at": now + self._policy.lease}
            self._update_trial(connection, row.id, **renewed)
            return sql.trial_record(row, **renewed)
        return None

    def _held_trial(self, trial_id: int) -> tuple[TrialRow, SweepRow]:
        """The trial and its sweep, both locked, for an event on the trial (api.lifecycle judges it)."""
        trial = self._trial(trial_id, lock=True)
        return trial, self._sweep(trial.sweep_id, lock=True)

    @staticmethod
    def _apply(trial: TrialRow, sweep: SweepRow, event: TrialEvent, caller: Caller | None = None, *,
               retry: bool = False) -> lifecycle.Step:
        """`event` on the trial, as api.lifecycle rules; LeaseConflictError (nothing changed) when not allowed.

        A lease past its expiry still counts until it is reaped: no one else has the trial yet.
        """
        try:
            return lifecycle.apply(_life(trial), event, sweep=sweep.status, caller=caller, retry=retry,
                                   max_attempts=_spec_limit(sweep, "max_attempts"))
        except lifecycle.LeaseConflict as conflict:
            raise LeaseConflictError(f"trial {trial.id} {conflict}") from None

    @staticmethod
    def _lease_holder(connection: Connection, trial_id: int, event: TrialEvent,
                      caller: Caller) -> tuple[Row[Any], lifecycle.Step]:
        """The trial's row with its sweep's columns (sql.LEASE_HOLDER), locked, and `event` from `caller` on it.

        LeaseConflictError, and nothing changes, unless the caller holds the current lease (or repeats the
        report that ended it). A lease past its expiry still counts until it is reaped.
        """
        row = connection.execute(sql.LEASE_HOLDER, {"trial": trial_id}).first() \
            if _is_row_id(trial_id) else None
        if row is None:
            raise TrialNotFoundError(trial_id)
        try:
            return row, lifecycle.apply(_life(row), event, sweep=row.sweep_status, caller=caller)
        except lifecycle.LeaseConflict as conflict:
            raise LeaseConflictError(f"trial {trial_id} {conflict}") from None

    def _end_attempt(self, trial: TrialRow, sweep: SweepRow, step: lifecycle.Step, now: datetime) -> None:
        """Store an attempt that did not succeed (a failure or a lost lease), as the lifecycle's step says."""
        _take(trial, step.trial)
        trial.lease_expires_at = None
        if trial.state.finished:
            trial.finished_at = now
        if step.failed_for_good:
            self._count_failure(sweep, trial, now)

    def _count_failure(self, sweep: SweepRow, trial: TrialRow, now: datetime) -> None:
        """One more trial failed for good in a row; at the spec's max_failures the sweep fails."""
        sweep.consecutive_failures += 1
        limit = _spec_limit(sweep, "max_failures")
        if lifecycle.sweep_after_failure(sweep.status, sweep.consecutive_failures, limit) != sweep.status:
            reason = (f"{sweep.consecutive_failures} trials failed in a row (max_failures is {limit}); "
                      f"the last, trial {trial.id}: {_first_line(trial.error, 'no error given')}")
            logger.error("sweep %d failed: %s", sweep.id, reason)
            self._end_sweep(sweep, SweepEvent.fail, reason, now)

    def _end_sweep(self, sweep: SweepRow, event: SweepEvent, reason: str, now: datetime) -> None:
        """End a sweep early: its pending trials are cancelled, its running ones cancel at their next call."""
        sweep.status = _sweep_after(sweep, event)
        sweep.status_reason = reason
        sweep.finished_at = now
        for trial in self._session.scalars(select(TrialRow).where(
                TrialRow.sweep_id == sweep.id, TrialRow.state == TrialState.pending)).all():
            _take(trial, self._apply(trial, sweep, TrialEvent.cancel).trial)
            trial.finished_at = now

    def _reap_expired_leases(self, now: datetime) -> int:
        expired = self._session.scalars(
            select(TrialRow).where(TrialRow.state == TrialState.running, TrialRow.lease_expires_at < now)
            .order_by(TrialRow.id).with_for_update(skip_locked=True)).all()
        for trial in expired:
            sweep = self._sweep(trial.sweep_id, lock=True)
            logger.warning("trial %d: worker %r lost its lease (attempt %d of %d)", trial.id, trial.worker_id,
                           trial.attempts, _spec_limit(sweep, "max_attempts"))
            trial.error, trial.failure_kind, trial.traceback = WORKER_LOST, FailureKind.crash, None
            self._end_attempt(trial, sweep, self._apply(trial, sweep, TrialEvent.expire), now)
        return len(expired)

    def _next_pending_trial(self, connection: Connection, worker_id: str, now: datetime) -> sql.TrialRecord | None:
        """The oldest pending trial of a running sweep, now running for the worker (one more attempt)."""
        row = connection.execute(sql.NEXT_PENDING).first()
        if row is None:
            return None
        claimed = lifecycle.apply(_life(row), TrialEvent.claim, sweep=SweepStatus.running,
                                  caller=Caller(worker_id, 0)).trial
        started = {"state": claimed.state, "worker_id": claimed.worker_id, "attempts": claimed.attempts,
                   "lease_token": claimed.lease_token, "lease_end": None, "started_at": now,
                   "lease_expires_at": now + self._policy.lease}
        if connection.execute(sql.START_PENDING, {"trial": row.id, **started}).rowcount != 1:
            # Cannot happen while each transaction is the only writer (BEGIN IMMEDIATE) or holds its rows
            # (FOR UPDATE); if it ever did, failing the claim is the safe answer.
            raise RuntimeError(f"trial {row.id} stopped being pending while it was being claimed")
        self._loaded_copy_takes(TrialRow, row.id, started)
        return sql.trial_record(row, **started)

    def _generate_next_trial(self, connection: Connection, worker_id: str, now: datetime) -> sql.TrialRecord | None:
        """Create trial `next_index` of the oldest running sweep with trials left, running for the worker.

        The strategy is a pure function of the index, so after a restart the sweep simply goes on
        with the stored next_index: no trial is skipped or repeated.
        """
        while (sweep := connection.execute(sql.NEXT_SWEEP).first()) is not None:
            try:
                hparams = self._plan(connection, sweep.id).strategy.config_at(sweep.next_index)
            except (SweeperError, IndexError) as error:
                # E.g. its model was unregistered since: the sweep cannot go on, the others can.
                logger.error("sweep %d cannot generate trial %d, marking it failed: %s", sweep.id,
                             sweep.next_index, error)
                self._update_sweep(connection, sweep.id, status=SweepStatus.failed, finished_at=now)
                continue
            if connection.execute(sql.ADVANCE_SWEEP, {"sweep": sweep.id, "index": sweep.next_index}).rowcount != 1:
                raise RuntimeError(f"sweep {sweep.id}'s trial {sweep.next_index} was generated by another claim")
            self._loaded_copy_takes(SweepRow, sweep.id, {"next_index": sweep.next_index + 1})
            claimed = lifecycle.apply(TrialLife(TrialState.pending), TrialEvent.claim, sweep=SweepStatus.running,
                                      caller=Caller(worker_id, 0)).trial
            values: dict[str, Any] = {
                "sweep_id": sweep.id, "index": sweep.next_index, "state": claimed.state, "hparams": hparams,
                "metrics": {}, "attempts": claimed.attempts, "worker_id": claimed.worker_id,
                "lease_expires_at": now + self._policy.lease, "lease_token": claimed.lease_token, "lease_end": None,
                "error": None, "failure_kind": None, "traceback": None, "created_at": now, "started_at": now,
                "finished_at": None}
            [trial_id] = connection.execute(sql.INSERT_TRIAL, values).inserted_primary_key
            return sql.TrialRecord(id=trial_id, **values)
        return None

    def _complete_finished_sweeps(self, now: datetime, sweep_id: int | None = None) -> None:
        """Mark completed every running or paused sweep with all trials handed out and none pending or running.

        A paused sweep with nothing left to run is done too: pausing only holds back trials not yet started.
        """
        active = exists().where(TrialRow.sweep_id == SweepRow.id, TrialRow.state.in_(_ACTIVE))
        query = select(SweepRow).where(SweepRow.status.in_(OPEN),
                                       SweepRow.next_index >= SweepRow.total_trials, ~active)
        if sweep_id is not None:
            query = query.where(SweepRow.id == sweep_id)
        for sweep in self._session.scalars(query):
            sweep.status = _sweep_after(sweep, SweepEvent.finish)
            sweep.finished_at = now


_RETRIED_KINDS = (FailureKind.crash, FailureKind.io)
"""Failures that are no fault of the configuration: retried while attempts remain, whatever the report says."""


def _life(trial: TrialRow | Row[Any]) -> TrialLife:
    """What api.lifecycle needs of a trial, from its ORM row or a Core row with its columns."""
    return TrialLife(trial.state, trial.worker_id, trial.lease_token, trial.attempts, trial.lease_end)


def _take(trial: TrialRow, life: TrialLife) -> None:
    """The trial's row takes the lifecycle's result."""
    trial.state, trial.worker_id, trial.attempts = life.state, life.worker_id, life.attempts
    trial.lease_token, trial.lease_end = life.lease_token, life.lease_end


def _sweep_after(sweep: SweepRow, event: SweepEvent) -> SweepStatus:
    try:
        return lifecycle.sweep_after(sweep.status, event)
    except lifecycle.SweepStateConflict as conflict:
        raise SweepStateError(f"sweep {sweep.id} {conflict}") from None


def _spec_limit(sweep: SweepRow, name: str) -> int:
    """A retry limit (max_attempts, max_failures) from the stored spec.

    Read from the stored JSON, not the parsed spec: reaping must work for a sweep whose model is no
    longer registered, and a sweep stored before the field existed gets its default.
    """
    value = sweep.spec.get(name)
    return value if isinstance(value, int) else SweepSpec.model_fields[name].default


def _first_line(text: str | None, default: str, limit: int = 200) -> str:
    """A message's first line, cut to `limit` characters: errors and tracebacks can run to pages."""
    lines = (text or "").strip().splitlines()
    line = lines[0] if lines else default
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _finite(metrics: Mapping[str, float]) -> dict[str, float | None]:
    # JSON (and PostgreSQL's json type) has no NaN or infinity; a diverged metric is stored as null.
    return {name: value if math.isfinite(value) else None for name, value in metrics.items()}


def _is_row_id(value: int) -> bool:
    # Larger ids cannot exist, and the database driver would refuse to even compare them.
    return 0 <= value <= _MAX_ROW_ID


"""What every part of the storage layer shares: the session and its transactions, rows by id, the Core
statements' bookkeeping, workers seen, and the lifecycle's events applied to rows.

Claiming, reaping and every report are compare-and-set inside one transaction: on SQLite every
transaction begins with BEGIN IMMEDIATE (see api.db), so two claims never see the same pending trial or
the same next index, and two server processes never reap the same lease twice; on other databases the
rows read are locked FOR UPDATE (SKIP LOCKED for pending trials and expired leases).
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
from typing import Any

from sqlalchemy import Connection, Row, event, exists, func, select
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from sweeper import (SweeperError, SweepSpec, Strategy, UnknownTrialError, log_files, log_location, make_strategy,
                     parse_spec)
from sweeper.messages import ClaimRequest, LeaseConflictReason, SweepStatus, TrialState

from api import lifecycle
from api.claims import statements as sql
from api.lifecycle import OPEN, Caller, SweepEvent, TrialEvent, TrialLife
from api.models import Base, SweepRow, TrialRow, WorkerRow, run_name, utcnow
from api.queries import first_failures, first_line
from api.search.decisions import Search

logger = logging.getLogger("api.storage")

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


class TrialNumberNotFoundError(UnknownTrialError):
    def __init__(self, sweep_id: int, number: int, trials: int):
        so_far = f"its trials so far: 1 to {trials}" if trials else "it has no trials yet"
        super().__init__(f"sweep {sweep_id} has no trial {number} ({so_far})")
        self.sweep_id, self.number = sweep_id, number


class LeaseConflictError(SweeperError):
    """A worker called on a trial whose current lease it does not hold (a stale token); nothing was changed."""

    def __init__(self, message: str, reason: LeaseConflictReason):
        super().__init__(message)
        self.reason = reason


class SweepStateError(SweeperError):
    """A control request (pause, resume, cancel) that the sweep's current status does not allow."""


@dataclass(frozen=True)
class SweepPlan:
    """A sweep's parsed spec, its strategy, and its adaptive search or stopping rule, if it has either."""

    spec: SweepSpec
    strategy: Strategy
    stored_spec: dict[str, Any]
    """The spec as stored (SweepRow.spec), so a claim needs not read and decode it again; never modified."""
    run_digits: int | None
    """SweepRow.run_digits: how its trials' run names are padded; None names their folders by trial id."""
    search: Search | None = None
    """The sampler and pruner over the sweep's study in memory (api.search), kept in step with the database."""

    @classmethod
    def of(cls, sweep_id: int, spec: SweepSpec, stored: dict[str, Any], run_digits: int | None) -> SweepPlan:
        search = Search(sweep_id, spec) if spec.search.adaptive or spec.stops_early else None
        return cls(spec, make_strategy(spec), stored, run_digits, search)

    def run_name(self, trial_id: int, number: int) -> str:
        """The name of the trial's folder under its sweep's and of its TensorBoard run (log_location.run_name)."""
        return run_name(self.run_digits, trial_id, number)


class PlanCache:
    """Parsed specs and strategies by sweep id, shared by all requests of one app; thread-safe.

    A sweep's spec changes only when it is extended (search.max_trials): the process that extends it puts
    the new plan, and any other finds its plan's total behind the sweep's and reads it again. Otherwise the
    cache only saves re-parsing the spec and rebuilding the strategy on every claim.
    """

    def __init__(self, size: int = 4096):
        self._size = size
        self._plans: OrderedDict[int, SweepPlan] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sweep: SweepRow) -> SweepPlan:
        return self.lookup(sweep.id, lambda: (sweep.spec, sweep.run_digits))

    def lookup(self, sweep_id: int, stored: Callable[[], tuple[dict[str, Any], int | None]]) -> SweepPlan:
        """The sweep's plan; `stored()` (its SweepRow.spec and .run_digits) is only called when it is not cached."""
        with self._lock:
            plan = self._plans.get(sweep_id)
            if plan is not None:
                self._plans.move_to_end(sweep_id)
                return plan
        spec, run_digits = stored()
        plan = SweepPlan.of(sweep_id, parse_spec(spec, stored=True), spec, run_digits)
        self.put(sweep_id, plan)
        return plan

    def forget(self, sweep_id: int) -> None:
        """Drop the sweep's plan: its stored spec changed (it was extended), so it is read again."""
        with self._lock:
            self._plans.pop(sweep_id, None)

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
    logdir: str | None = None
    """The server's logdir (resolved), under which Population Based Training members save the snapshots the
    server names in its exploit answers and deletes once no member may copy them; None: snapshots are named
    relative to the workers' folder and never deleted (a repository without a logdir, in a script)."""



class Store:
    """The session one request (or one batch of calls) works in, and what every part of storage does with it."""

    def __init__(self, session: Session, policy: LeasePolicy, plans: PlanCache,
                 clock: Callable[[], datetime] = utcnow):
        self._session = session
        self._policy = policy
        self._plans = plans
        self._clock = clock
        self._probed_in: SessionTransaction | None = None
        self._seen_later: dict[str, dict[str, Any]] | None = None
        """Inside batch(): the workers seen so far and their latest values, written when it ends."""

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for many calls of the worker protocol (api.claims.desk runs claims and completions so).

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

    def _after_commit(self, work: Callable[[], None]) -> None:
        """Run `work` once the current transaction has committed (file deletions: a rollback must not leave a
        file deleted that the database still names); dropped if it rolls back. Best effort: a failure is logged."""
        if not event.contains(self._session, "after_commit", _run_after_commit):
            event.listen(self._session, "after_commit", _run_after_commit)
            event.listen(self._session, "after_rollback", _drop_after_commit)
        self._session.info.setdefault(_AFTER_COMMIT, []).append(work)

    def _forget_snapshots(self, sweep_id: int, stored_spec: Mapping[str, Any]) -> None:
        """A sweep ended: every snapshot of its members goes, once the transaction commits (a pbt sweep's only)."""
        search = stored_spec.get("search")
        if self._policy.logdir is None or not isinstance(search, dict) or search.get("strategy") != "pbt":
            return
        folder = log_location.snapshots_dir(self._policy.logdir, sweep_id)

        def delete() -> None:
            delete_quietly(log_files.rmtree, folder, f"sweep {sweep_id} ended")
            logger.info("sweep %d ended: deleted its PBT snapshots", sweep_id)

        self._after_commit(delete)

    def _transaction(self) -> AbstractContextManager[Any]:
        """A transaction of its own, or the one the caller already opened: a batch of claims and completions
        (api.claims.desk) runs many calls in one transaction, and commits or rolls back them all."""
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

    def _plan(self, connection: Connection, sweep_id: int) -> SweepPlan:
        """The sweep's plan, from the cache; its spec is read from the database on a miss only."""
        def stored() -> tuple[dict[str, Any], int | None]:
            row = connection.execute(sql.SWEEP_SPEC, {"sweep": sweep_id}).one()
            return row.spec, row.run_digits

        return self._plans.lookup(sweep_id, stored)

    def _sweep(self, sweep_id: int, *, lock: bool = False) -> SweepRow:
        """The sweep; `lock` when its status or counters are about to change (FOR UPDATE beyond SQLite)."""
        sweep = self._session.get(SweepRow, sweep_id, with_for_update=lock or None, populate_existing=lock) \
            if is_row_id(sweep_id) else None
        if sweep is None:
            raise SweepNotFoundError(sweep_id)
        return sweep

    def _trial(self, trial_id: int, *, lock: bool = False) -> TrialRow:
        trial = self._session.get(TrialRow, trial_id, with_for_update=lock or None, populate_existing=lock) \
            if is_row_id(trial_id) else None
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
            values.update(host=claim.host, gpu=claim.gpu, gpus=claim.gpus)
        if self._seen_later is not None:
            self._seen_later.setdefault(worker_id, {"first_seen_at": now}).update(values)
            return
        connection = connection or self._session.connection()
        if connection.execute(sql.UPDATE_WORKER, {"worker": worker_id, **values}).rowcount == 0:
            connection.execute(sql.INSERT_WORKER, {"id": worker_id, "first_seen_at": now, **values})
        else:
            self._loaded_copy_takes(WorkerRow, worker_id, values)

    @staticmethod
    def _apply(trial: TrialRow, sweep: SweepRow, event: TrialEvent, caller: Caller | None = None, *,
               retry: bool = False) -> lifecycle.Step:
        """`event` on the trial, as api.lifecycle rules; LeaseConflictError (nothing changed) when not allowed.

        A lease past its expiry still counts until it is reaped: no one else has the trial yet.
        """
        try:
            return lifecycle.apply(life_of(trial), event, sweep=sweep.status, caller=caller, retry=retry,
                                   max_attempts=spec_limit(sweep, "max_attempts"))
        except lifecycle.LeaseConflict as conflict:
            raise LeaseConflictError(f"trial {trial.id} {conflict}", conflict.reason) from None

    def _count_failure(self, sweep: SweepRow, trial: TrialRow, now: datetime) -> None:
        """One more trial failed for good in a row; at the spec's max_failures the sweep fails."""
        sweep.consecutive_failures += 1
        limit = spec_limit(sweep, "max_failures")
        if lifecycle.sweep_after_failure(sweep.status, sweep.consecutive_failures, limit) != sweep.status:
            reason = (f"{sweep.consecutive_failures} trials failed in a row (max_failures is {limit}); "
                      f"the last, trial {trial.id}: {first_line(trial.error, 'no error given')}")
            logger.error("sweep %d failed: %s", sweep.id, reason)
            self._end_sweep(sweep, SweepEvent.fail, reason, now)

    def _end_sweep(self, sweep: SweepRow, event: SweepEvent, reason: str, now: datetime) -> None:
        """End a sweep early: its pending trials are cancelled, its running ones cancel at their next call."""
        sweep.status = next_status(sweep, event)
        sweep.status_reason = reason
        sweep.finished_at = now
        self._forget_snapshots(sweep.id, sweep.spec)
        for trial in self._session.scalars(select(TrialRow).where(
                TrialRow.sweep_id == sweep.id, TrialRow.state == TrialState.pending)).all():
            take(trial, self._apply(trial, sweep, TrialEvent.cancel).trial)
            trial.finished_at = now

    def _complete_finished_sweeps(self, now: datetime, sweep_id: int | None = None) -> None:
        """End every running or paused sweep with all trials handed out and none pending or running: completed
        when any trial completed or was pruned, failed when every one failed (api.lifecycle.sweep_end).

        A paused sweep with nothing left to run is done too: pausing only holds back trials not yet started.
        """
        active = exists().where(TrialRow.sweep_id == SweepRow.id, TrialRow.state.in_(_ACTIVE))
        query = select(SweepRow).where(SweepRow.status.in_(OPEN),
                                       SweepRow.next_index >= SweepRow.total_trials, ~active)
        if sweep_id is not None:
            query = query.where(SweepRow.id == sweep_id)
        for sweep in self._session.scalars(query).all():
            counts = dict(self._session.execute(
                select(TrialRow.state, func.count()).where(TrialRow.sweep_id == sweep.id).group_by(TrialRow.state)
            ).all())
            event = lifecycle.sweep_end(counts.get(TrialState.completed, 0), counts.get(TrialState.pruned, 0))
            if event is SweepEvent.fail:
                first = first_failures(self._session, [sweep.id]).get(sweep.id)
                reason = (f"no trial completed: {counts.get(TrialState.failed, 0)} failed"
                          + (f"; the first, {first}" if first else ""))
                logger.error("sweep %d failed: %s", sweep.id, reason)
                self._end_sweep(sweep, event, reason, now)
            else:
                sweep.status = next_status(sweep, event)
                sweep.finished_at = now
                self._forget_snapshots(sweep.id, sweep.spec)


_AFTER_COMMIT = "sweeper_after_commit"
"""Session.info's key for the work `Store._after_commit` queued."""


def _run_after_commit(session: Session) -> None:
    # The transaction has committed: whatever happens here must not turn its answer into an error.
    for work in session.info.pop(_AFTER_COMMIT, []):
        try:
            work()
        except Exception:
            logger.exception("work after a commit failed; the committed changes stand")


def _drop_after_commit(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)


def delete_quietly(remove: Callable[[str], None], location: str, why: str) -> None:
    """Delete a snapshot file or folder, best effort: a failure leaves it behind, logged, and nothing else."""
    try:
        remove(location)
    except Exception as error:  # a file store away or refusing: the sweep goes on, the file is left over
        logger.warning("could not delete PBT snapshots %s (%s): %s", location, why, error)
    else:
        logger.debug("deleted PBT snapshots %s (%s)", location, why)


def life_of(trial: TrialRow | Row[Any]) -> TrialLife:
    """What api.lifecycle needs of a trial, from its ORM row or a Core row with its columns."""
    return TrialLife(trial.state, trial.worker_id, trial.lease_token, trial.attempts, trial.lease_end)


def take(trial: TrialRow, life: TrialLife) -> None:
    """The trial's row takes the lifecycle's result."""
    trial.state, trial.worker_id, trial.attempts = life.state, life.worker_id, life.attempts
    trial.lease_token, trial.lease_end = life.lease_token, life.lease_end


def next_status(sweep: SweepRow, event: SweepEvent) -> SweepStatus:
    try:
        return lifecycle.sweep_after(sweep.status, event)
    except lifecycle.SweepStateConflict as conflict:
        raise SweepStateError(f"sweep {sweep.id} {conflict}") from None


def spec_limit(sweep: SweepRow, name: str) -> int:
    """A retry limit (max_attempts, max_failures) from the stored spec.

    Read from the stored JSON, not the parsed spec: reaping must work for a sweep whose model is no
    longer registered, and a sweep stored before the field existed gets its default.
    """
    value = sweep.spec.get(name)
    return value if isinstance(value, int) else SweepSpec.model_fields[name].default


def finite(metrics: Mapping[str, float]) -> dict[str, float | None]:
    # JSON (and PostgreSQL's json type) has no NaN or infinity; a diverged metric is stored as null.
    return {name: value if math.isfinite(value) else None for name, value in metrics.items()}


def is_row_id(value: int) -> bool:
    # Larger ids cannot exist, and the database driver would refuse to even compare them.
    return 0 <= value <= _MAX_ROW_ID


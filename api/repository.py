"""Every read and write of sweeps, trials and workers, one transaction per public method; no HTTP in here.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from sweeper import Objective, SpecError, Strategy, SweeperError, SweepSpec, make_strategy, parse_spec
from sweeper._errors import UnknownTrialError
from sweeper.messages import (ClaimRequest, CompleteReport, Directive, FailReport, FailureKind, HeartbeatRequest,
                              MetricsReport, ReleaseReport, SweepStatus, TrialState)

from api.models import SweepRow, TrialEpochRow, TrialRow, WorkerRow, utcnow

logger = logging.getLogger(__name__)

WORKER_LOST = "worker lost"
"""The error of a trial whose worker stopped renewing its lease."""

CANCELLED_ON_REQUEST = "cancelled on request"
"""The reason of a sweep cancelled through the API."""

_MAX_ROW_ID = 2**63 - 1  # the largest id a database integer column holds
_ACTIVE = (TrialState.pending, TrialState.running)
_OPEN = (SweepStatus.running, SweepStatus.paused)
"""Sweeps that have not ended: they may still be paused, resumed, cancelled, completed or failed."""
_ENDED_EARLY = (SweepStatus.cancelled, SweepStatus.failed)
"""Sweeps whose running trials are told to cancel, and end cancelled whatever their worker reports."""


class SweepNotFoundError(SweeperError):
    def __init__(self, sweep_id: int):
        super().__init__(f"sweep {sweep_id} not found")
        self.sweep_id = sweep_id


class TrialNotFoundError(UnknownTrialError):
    def __init__(self, trial_id: int):
        super().__init__(f"trial {trial_id} not found")
        self.trial_id = trial_id


class LeaseConflictError(SweeperError):
    """A worker reported on a trial whose lease it does not hold; nothing was changed."""


class SweepStateError(SweeperError):
    """A control request (pause, resume, cancel) that the sweep's current status does not allow."""


@dataclass(frozen=True)
class SweepPlan:
    """A sweep's parsed spec and its (stateless) strategy."""

    spec: SweepSpec
    strategy: Strategy


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
        with self._lock:
            plan = self._plans.get(sweep.id)
            if plan is not None:
                self._plans.move_to_end(sweep.id)
                return plan
        spec = parse_spec(sweep.spec)
        plan = SweepPlan(spec, make_strategy(spec))
        self.put(sweep.id, plan)
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


@dataclass(frozen=True)
class Claimed:
    """A trial just claimed (or claimed again) by a worker, and its sweep."""

    trial: TrialRow
    sweep: SweepRow
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
            sweep = SweepRow(name=spec.name, status=SweepStatus.running, spec=spec.to_json(),
                             total_trials=strategy.total, next_index=0, created_at=self._clock())
            self._session.add(sweep)
            self._session.flush()
            self._plans.put(sweep.id, SweepPlan(spec, strategy))
            if on_created is not None:
                on_created(sweep.id)
        return SweepSummary(sweep, dict.fromkeys(TrialState, 0), None, strategy.size)

    def list_sweeps(self, *, limit: int, offset: int) -> tuple[list[SweepSummary], int]:
        """A page of sweeps, newest first, and how many there are in all."""
        with self._session.begin():
            count = self._session.scalar(select(func.count()).select_from(SweepRow)) or 0
            sweeps = list(self._session.scalars(
                select(SweepRow).order_by(SweepRow.id.desc()).limit(limit).offset(offset)))
            counts = self._trial_counts([sweep.id for sweep in sweeps])
            return [SweepSummary(sweep, counts[sweep.id], self._best_trial(sweep), self._space_size(sweep))
                    for sweep in sweeps], count

    def get_sweep(self, sweep_id: int) -> SweepSummary:
        with self._session.begin():
            return self._summary(self._sweep(sweep_id))

    def list_trials(self, sweep_id: int, *, limit: int, offset: int) -> tuple[list[TrialRow], int]:
        """A page of a sweep's trials in the order they were generated, and how many there are."""
        with self._session.begin():
            self._sweep(sweep_id)
            count = self._session.scalar(
                select(func.count()).select_from(TrialRow).where(TrialRow.sweep_id == sweep_id)) or 0
            trials = list(self._session.scalars(
                select(TrialRow).where(TrialRow.sweep_id == sweep_id).order_by(TrialRow.index)
                .limit(limit).offset(offset)))
            return trials, count

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
        with self._session.begin():
            now = self._clock()
            self._seen(request.worker_id, now, claim=request)
            if self._reap_expired_leases(now):
                self._complete_finished_sweeps(now)
            held = self._held_by(request.worker_id, now)
            if held is not None:
                return self._claimed(held)
            trial = self._next_pending_trial() or self._generate_next_trial(now)
            if trial is None:
                return None
            trial.state = TrialState.running
            trial.worker_id = request.worker_id
            trial.attempts += 1
            trial.started_at = now
            trial.lease_expires_at = now + self._policy.lease
            self._session.flush()
            return self._claimed(trial)

    def heartbeat(self, trial_id: int, request: HeartbeatRequest) -> Directive:
        """Extend the worker's lease on its trial; the answer says "cancel" once its sweep has ended."""
        with self._session.begin():
            trial = self._held_trial(trial_id, request.worker_id)
            now = self._clock()
            self._seen(request.worker_id, now)
            trial.lease_expires_at = now + self._policy.lease
            return self._directive(trial)

    def report_metrics(self, trial_id: int, report: MetricsReport) -> Directive:
        """Store one epoch's metrics and extend the lease.

        Stored once per (trial, epoch): a trial resumed from a checkpoint reports its later epochs again,
        and a repeated epoch replaces the earlier report.
        """
        with self._session.begin():
            trial = self._held_trial(trial_id, report.worker_id)
            now = self._clock()
            self._seen(report.worker_id, now)
            metrics = _finite(report.metrics)
            row = self._session.scalars(select(TrialEpochRow).where(
                TrialEpochRow.trial_id == trial_id, TrialEpochRow.epoch == report.epoch)).first()
            if row is None:
                self._session.add(TrialEpochRow(trial_id=trial_id, epoch=report.epoch, metrics=metrics,
                                                reported_at=now))
            else:
                row.metrics = metrics
                row.reported_at = now
            trial.lease_expires_at = now + self._policy.lease
            return self._directive(trial)

    def complete(self, trial_id: int, report: CompleteReport) -> TrialRow:
        """Record the final metrics and release the lease: completed, or cancelled if its sweep has ended."""
        with self._session.begin():
            trial = self._held_trial(trial_id, report.worker_id)
            now = self._clock()
            self._seen(report.worker_id, now)
            sweep = self._sweep(trial.sweep_id, lock=True)
            # Kept also for a cancelled trial: they are what it reached before it was stopped.
            trial.metrics = _finite(report.metrics)
            if sweep.status in _ENDED_EARLY:
                self._cancel_trial(trial, now)
                return trial
            trial.state = TrialState.completed
            # An earlier attempt's failure no longer describes a trial that succeeded.
            trial.error = trial.failure_kind = trial.traceback = None
            trial.finished_at = now
            trial.lease_expires_at = None
            sweep.consecutive_failures = 0
            self._complete_finished_sweeps(now, sweep_id=trial.sweep_id)
            return trial

    def fail(self, trial_id: int, report: FailReport) -> TrialRow:
        """Record a failure with its kind and traceback.

        A retryable failure, or a crash (the worker process died: nothing says the configuration is
        at fault), goes back to pending while the sweep's max_attempts allow; anything else (an error,
        NaN, out of memory) fails for good and counts towards the sweep's max_failures.
        """
        with self._session.begin():
            trial = self._held_trial(trial_id, report.worker_id)
            now = self._clock()
            self._seen(report.worker_id, now)
            sweep = self._sweep(trial.sweep_id, lock=True)
            trial.error, trial.failure_kind, trial.traceback = report.error, report.kind, report.traceback
            self._end_attempt(trial, sweep, now, retry=report.retryable or report.kind == FailureKind.crash)
            self._complete_finished_sweeps(now, sweep_id=trial.sweep_id)
            return trial

    def release(self, trial_id: int, report: ReleaseReport) -> TrialRow:
        """Take a trial back unfinished (its worker is shutting down): pending again for any worker.

        The attempt its claim counted is given back, since the trial did not fail; its per-epoch
        history stays, and the worker that resumes it from its checkpoint reports the later epochs.
        A trial of a sweep that has ended is cancelled instead.
        """
        with self._session.begin():
            trial = self._held_trial(trial_id, report.worker_id)
            now = self._clock()
            self._seen(report.worker_id, now)
            sweep = self._sweep(trial.sweep_id, lock=True)
            logger.info("trial %d released by worker %r after %d epoch(s): %s", trial.id, report.worker_id,
                        report.epochs_done, _first_line(report.reason, "no reason given"))
            if sweep.status in _ENDED_EARLY:
                self._cancel_trial(trial, now)
                return trial
            trial.state = TrialState.pending
            trial.worker_id = None
            trial.lease_expires_at = None
            trial.attempts = max(0, trial.attempts - 1)
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
            _require_status(sweep, (SweepStatus.running,), "paused")
            sweep.status = SweepStatus.paused
            return self._summary(sweep)

    def resume_sweep(self, sweep_id: int) -> SweepSummary:
        """A paused sweep runs again: its pending trials and the rest of its search are claimed."""
        with self._session.begin():
            sweep = self._sweep(sweep_id, lock=True)
            _require_status(sweep, (SweepStatus.paused,), "resumed")
            sweep.status = SweepStatus.running
            return self._summary(sweep)

    def cancel_sweep(self, sweep_id: int) -> SweepSummary:
        """End the sweep: pending trials are cancelled, running ones are told to cancel at their next call."""
        with self._session.begin():
            sweep = self._sweep(sweep_id, lock=True)
            _require_status(sweep, _OPEN, "cancelled")
            self._end_sweep(sweep, SweepStatus.cancelled, CANCELLED_ON_REQUEST, self._clock())
            return self._summary(sweep)

    # -- workers -----------------------------------------------------------------------------------

    def list_workers(self, *, limit: int, offset: int) -> tuple[list[WorkerStatus], int]:
        """A page of the workers ever seen, by id, each with its state now, and how many there are."""
        with self._session.begin():
            now = self._clock()
            count = self._session.scalar(select(func.count()).select_from(WorkerRow)) or 0
            workers = list(self._session.scalars(select(WorkerRow).order_by(WorkerRow.id).limit(limit).offset(offset)))
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
        return SweepSummary(sweep, self._trial_counts([sweep.id])[sweep.id], self._best_trial(sweep),
                            self._space_size(sweep))

    def _space_size(self, sweep: SweepRow) -> int | None:
        # Derived from the spec, never stored: the plan cache parses each sweep's spec once per process.
        return self._plans.get(sweep).strategy.size

    def _claimed(self, trial: TrialRow) -> Claimed:
        sweep = self._sweep(trial.sweep_id)
        return Claimed(trial, sweep, self._plans.get(sweep))

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

    def _seen(self, worker_id: str, now: datetime, claim: ClaimRequest | None = None) -> None:
        """Record that the worker called now; a claim also says where it runs."""
        worker = self._session.get(WorkerRow, worker_id)
        if worker is None:
            worker = WorkerRow(id=worker_id, first_seen_at=now)
            self._session.add(worker)
        worker.last_seen_at = now
        if claim is not None:
            worker.host, worker.gpu = claim.host, claim.gpu

    def _worker_state(self, worker: WorkerRow, trial_id: int | None, now: datetime) -> WorkerState:
        if worker.last_seen_at + self._policy.lease < now:
            return WorkerState.lost
        return WorkerState.idle if trial_id is None else WorkerState.busy

    def _held_by(self, worker_id: str, now: datetime) -> TrialRow | None:
        """The running trial this worker already holds, its lease renewed, if its sweep goes on.

        A held trial whose sweep ended while its worker was away (restarting, say) is cancelled here:
        the worker must not start it again.
        """
        for trial in self._session.scalars(
                select(TrialRow).where(TrialRow.state == TrialState.running, TrialRow.worker_id == worker_id)
                .order_by(TrialRow.id).with_for_update()).all():
            if self._sweep(trial.sweep_id).status in _ENDED_EARLY:
                self._cancel_trial(trial, now)
                continue
            trial.lease_expires_at = now + self._policy.lease
            return trial
        return None

    def _held_trial(self, trial_id: int, worker_id: str) -> TrialRow:
        """The trial, if `worker_id` holds its lease; else the reason it does not, and nothing changes.

        A lease past its expiry still counts until it is reaped: no one else has the trial yet.
        """
        trial = self._trial(trial_id, lock=True)
        if trial.state != TrialState.running:
            raise LeaseConflictError(f"trial {trial_id} is {trial.state.value}, not running: worker {worker_id!r} "
                                     f"holds no lease on it")
        if trial.worker_id != worker_id:
            raise LeaseConflictError(f"trial {trial_id} is leased to worker {trial.worker_id!r}, not to {worker_id!r}")
        return trial

    def _directive(self, trial: TrialRow) -> Directive:
        # A paused sweep's running trials finish normally; an ended sweep's stop now.
        sweep = self._sweep(trial.sweep_id)
        return Directive(action="cancel" if sweep.status in _ENDED_EARLY else "continue")

    def _end_attempt(self, trial: TrialRow, sweep: SweepRow, now: datetime, *, retry: bool) -> None:
        """End an attempt that did not succeed: back to pending while attempts remain, else failed.

        A trial of a sweep that has ended is cancelled instead: its failure no longer matters.
        """
        trial.lease_expires_at = None
        if sweep.status in _ENDED_EARLY:
            self._cancel_trial(trial, now)
        elif retry and trial.attempts < _spec_limit(sweep, "max_attempts"):
            trial.state = TrialState.pending
            trial.worker_id = None
        else:
            # The worker id stays, to tell which worker the trial was lost or failed on.
            trial.state = TrialState.failed
            trial.finished_at = now
            self._count_failure(sweep, trial, now)

    def _count_failure(self, sweep: SweepRow, trial: TrialRow, now: datetime) -> None:
        """One more trial failed for good in a row; at the spec's max_failures the sweep fails."""
        sweep.consecutive_failures += 1
        limit = _spec_limit(sweep, "max_failures")
        if sweep.status in _OPEN and sweep.consecutive_failures >= limit:
            reason = (f"{sweep.consecutive_failures} trials failed in a row (max_failures is {limit}); "
                      f"the last, trial {trial.id}: {_first_line(trial.error, 'no error given')}")
            logger.error("sweep %d failed: %s", sweep.id, reason)
            self._end_sweep(sweep, SweepStatus.failed, reason, now)

    def _end_sweep(self, sweep: SweepRow, status: SweepStatus, reason: str, now: datetime) -> None:
        """End a sweep early: its pending trials are cancelled, its running ones cancel at their next call."""
        sweep.status = status
        sweep.status_reason = reason
        sweep.finished_at = now
        for trial in self._session.scalars(select(TrialRow).where(
                TrialRow.sweep_id == sweep.id, TrialRow.state == TrialState.pending)).all():
            self._cancel_trial(trial, now)

    @staticmethod
    def _cancel_trial(trial: TrialRow, now: datetime) -> None:
        trial.state = TrialState.cancelled
        trial.lease_expires_at = None
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
            self._end_attempt(trial, sweep, now, retry=True)
        return len(expired)

    def _next_pending_trial(self) -> TrialRow | None:
        return self._session.scalars(
            select(TrialRow).join(SweepRow, SweepRow.id == TrialRow.sweep_id)
            .where(TrialRow.state == TrialState.pending, SweepRow.status == SweepStatus.running)
            .order_by(TrialRow.id).limit(1).with_for_update(of=TrialRow, skip_locked=True)).first()

    def _generate_next_trial(self, now: datetime) -> TrialRow | None:
        """Create trial `next_index` of the oldest running sweep that has trials left to hand out.

        The strategy is a pure function of the index, so after a restart the sweep simply goes on
        with the stored next_index: no trial is skipped or repeated.
        """
        candidates = select(SweepRow).where(
            SweepRow.status == SweepStatus.running, SweepRow.next_index < SweepRow.total_trials,
        ).order_by(SweepRow.id).limit(1).with_for_update()
        while (sweep := self._session.scalars(candidates).first()) is not None:
            try:
                plan = self._plans.get(sweep)
                hparams = plan.strategy.config_at(sweep.next_index)
            except (SweeperError, IndexError) as error:
                # E.g. its model was unregistered since: the sweep cannot go on, the others can.
                logger.error("sweep %d cannot generate trial %d, marking it failed: %s", sweep.id,
                             sweep.next_index, error)
                sweep.status = SweepStatus.failed
                sweep.finished_at = now
                continue
            trial = TrialRow(sweep_id=sweep.id, index=sweep.next_index, state=TrialState.pending,
                             hparams=hparams, metrics={}, attempts=0, created_at=now)
            sweep.next_index += 1
            self._session.add(trial)
            return trial
        return None

    def _complete_finished_sweeps(self, now: datetime, sweep_id: int | None = None) -> None:
        """Mark completed every running or paused sweep with all trials handed out and none pending or running.

        A paused sweep with nothing left to run is done too: pausing only holds back trials not yet started.
        """
        active = exists().where(TrialRow.sweep_id == SweepRow.id, TrialRow.state.in_(_ACTIVE))
        query = select(SweepRow).where(SweepRow.status.in_(_OPEN),
                                       SweepRow.next_index >= SweepRow.total_trials, ~active)
        if sweep_id is not None:
            query = query.where(SweepRow.id == sweep_id)
        for sweep in self._session.scalars(query):
            sweep.status = SweepStatus.completed
            sweep.finished_at = now

    def _trial_counts(self, sweep_ids: Iterable[int]) -> dict[int, dict[TrialState, int]]:
        ids = list(sweep_ids)
        counts = {sweep_id: dict.fromkeys(TrialState, 0) for sweep_id in ids}
        if ids:
            rows = self._session.execute(
                select(TrialRow.sweep_id, TrialRow.state, func.count())
                .where(TrialRow.sweep_id.in_(ids)).group_by(TrialRow.sweep_id, TrialRow.state))
            for sweep_id, state, count in rows:
                counts[sweep_id][TrialState(state)] = count
        return counts

    def _best_trial(self, sweep: SweepRow) -> TrialRow | None:
        """The completed trial with the best objective; the earliest one wins a tie.

        Chosen in Python rather than with JSON operators in SQL, whose path syntax differs between
        databases and breaks on metric names with quotes.
        """
        # Read from the stored spec alone: a GET must not depend on the registries still naming its model.
        objective = Objective.model_validate(sweep.spec["objective"])
        best: tuple[int, float] | None = None
        # Only ids and metrics: a sweep may have thousands of completed trials.
        for trial_id, metrics in self._session.execute(
                select(TrialRow.id, TrialRow.metrics)
                .where(TrialRow.sweep_id == sweep.id, TrialRow.state == TrialState.completed).order_by(TrialRow.id)):
            value = metrics.get(objective.metric)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if best is None or objective.better(value, best[1]):
                best = trial_id, value
        return None if best is None else self._session.get(TrialRow, best[0])


def _require_status(sweep: SweepRow, allowed: tuple[SweepStatus, ...], done: str) -> None:
    if sweep.status not in allowed:
        names = " or ".join(status.value for status in allowed)
        raise SweepStateError(f"sweep {sweep.id} is {sweep.status.value}: only a {names} sweep can be {done}")


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


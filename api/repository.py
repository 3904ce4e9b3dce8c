"""Every read and write of sweeps and trials, one transaction per public method; no HTTP in here.

Claiming is compare-and-set inside one transaction: on SQLite every transaction begins with BEGIN
IMMEDIATE (see api.db), so two claims never see the same pending trial or the same next index; on
other databases the rows read are locked FOR UPDATE (SKIP LOCKED for the pending trial).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from sweeper import Objective, SpecError, Strategy, SweeperError, SweepSpec, make_strategy, parse_spec
from sweeper._errors import UnknownTrialError
from sweeper.messages import (ClaimRequest, CompleteReport, Directive, FailReport, HeartbeatRequest, MetricsReport,
                              SweepStatus, TrialState)

from api.models import SweepRow, TrialEpochRow, TrialRow, utcnow

logger = logging.getLogger(__name__)

WORKER_LOST = "worker lost"
"""The error of a trial whose worker stopped renewing its lease."""

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
    """A worker reported on a trial whose lease it does not hold; nothing was changed."""


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
    lease: timedelta
    """How long a claimed trial stays with its worker without a heartbeat."""
    max_attempts: int
    """Attempts (claims) after which a lost or retryably failed trial fails for good."""


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
            sweep = self._sweep(sweep_id)
            return SweepSummary(sweep, self._trial_counts([sweep.id])[sweep.id], self._best_trial(sweep),
                                self._space_size(sweep))

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
        idempotent); else the oldest pending trial; else generate the next trial of the oldest sweep
        that has some left.
        """
        with self._session.begin():
            now = self._clock()
            self._reap_expired_leases(now)
            self._complete_finished_sweeps(now)
            held = self._session.scalars(
                select(TrialRow).where(TrialRow.state == TrialState.running, TrialRow.worker_id == request.worker_id)
                .order_by(TrialRow.id).limit(1)).first()
            if held is not None:
                held.lease_expires_at = now + self._policy.lease
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
        """Extend the worker's lease on its trial."""
        with self._session.begin():
            trial = self._held_trial(trial_id, request.worker_id)
            trial.lease_expires_at = self._clock() + self._policy.lease
            return self._directive(trial)

    def report_metrics(self, trial_id: int, report: MetricsReport) -> Directive:
        """Store one epoch's metrics (a repeated epoch replaces the earlier report) and extend the lease."""
        with self._session.begin():
            trial = self._held_trial(trial_id, report.worker_id)
            now = self._clock()
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
        """Record the final metrics; the trial is completed and its lease released."""
        with self._session.begin():
            trial = self._held_trial(trial_id, report.worker_id)
            now = self._clock()
            trial.state = TrialState.completed
            trial.metrics = _finite(report.metrics)
            # An earlier attempt's error no longer describes a trial that succeeded.
            trial.error = None
            trial.finished_at = now
            trial.lease_expires_at = None
            self._complete_finished_sweeps(now, sweep_id=trial.sweep_id)
            return trial

    def fail(self, trial_id: int, report: FailReport) -> TrialRow:
        """Record a failure: a retryable one with attempts left goes back to pending, else it fails."""
        with self._session.begin():
            trial = self._held_trial(trial_id, report.worker_id)
            now = self._clock()
            self._release(trial, report.error, now, retry=report.retryable)
            self._complete_finished_sweeps(now, sweep_id=trial.sweep_id)
            return trial

    # -- helpers (inside a transaction) ------------------------------------------------------------

    def _space_size(self, sweep: SweepRow) -> int | None:
        # Derived from the spec, never stored: the plan cache parses each sweep's spec once per process.
        return self._plans.get(sweep).strategy.size

    def _claimed(self, trial: TrialRow) -> Claimed:
        sweep = self._sweep(trial.sweep_id)
        return Claimed(trial, sweep, self._plans.get(sweep))

    def _sweep(self, sweep_id: int) -> SweepRow:
        sweep = self._session.get(SweepRow, sweep_id) if _is_row_id(sweep_id) else None
        if sweep is None:
            raise SweepNotFoundError(sweep_id)
        return sweep

    def _trial(self, trial_id: int) -> TrialRow:
        trial = self._session.get(TrialRow, trial_id) if _is_row_id(trial_id) else None
        if trial is None:
            raise TrialNotFoundError(trial_id)
        return trial

    def _held_trial(self, trial_id: int, worker_id: str) -> TrialRow:
        """The trial, if `worker_id` holds its lease; else the reason it does not, and nothing changes.

        A lease past its expiry still counts until a claim reaps it: no one else has the trial yet.
        """
        trial = self._trial(trial_id)
        if trial.state != TrialState.running:
            raise LeaseConflictError(f"trial {trial_id} is {trial.state.value}, not running: worker {worker_id!r} "
                                     f"holds no lease on it")
        if trial.worker_id != worker_id:
            raise LeaseConflictError(f"trial {trial_id} is leased to worker {trial.worker_id!r}, not to {worker_id!r}")
        return trial

    def _directive(self, trial: TrialRow) -> Directive:
        sweep = self._sweep(trial.sweep_id)
        return Directive(action="stop" if sweep.status == SweepStatus.cancelled else "continue")

    def _release(self, trial: TrialRow, error: str, now: datetime, *, retry: bool) -> None:
        """End an attempt that did not succeed: back to pending while attempts remain, else failed."""
        trial.error = error
        trial.lease_expires_at = None
        if retry and trial.attempts < self._policy.max_attempts:
            trial.state = TrialState.pending
            trial.worker_id = None
        else:
            # The worker id stays, to tell which worker the trial was lost or failed on.
            trial.state = TrialState.failed
            trial.finished_at = now

    def _reap_expired_leases(self, now: datetime) -> None:
        expired = self._session.scalars(
            select(TrialRow).where(TrialRow.state == TrialState.running, TrialRow.lease_expires_at < now)
            .order_by(TrialRow.id).with_for_update(skip_locked=True))
        for trial in expired:
            logger.warning("trial %d: worker %r lost its lease (attempt %d of %d)", trial.id, trial.worker_id,
                           trial.attempts, self._policy.max_attempts)
            self._release(trial, WORKER_LOST, now, retry=True)

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
        """Mark completed every running sweep with all trials handed out and none pending or running."""
        active = exists().where(TrialRow.sweep_id == SweepRow.id, TrialRow.state.in_(_ACTIVE))
        query = select(SweepRow).where(SweepRow.status == SweepStatus.running,
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


def _finite(metrics: Mapping[str, float]) -> dict[str, float | None]:
    # JSON (and PostgreSQL's json type) has no NaN or infinity; a diverged metric is stored as null.
    return {name: value if math.isfinite(value) else None for name, value in metrics.items()}


def _is_row_id(value: int) -> bool:
    # Larger ids cannot exist, and the database driver would refuse to even compare them.
    return 0 <= value <= _MAX_ROW_ID


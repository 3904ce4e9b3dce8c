"""Trials and their leases: the worker protocol (claim, heartbeat, metrics, complete, fail, release) and
the reaping of leases that ran out. Each call loads the trial, asks api.lifecycle what the event does,
and stores the result.

The hot path (claim, heartbeat, metrics, complete) runs prebuilt Core statements (api.claims.statements)
and returns plain records; the rarer paths (fail, release, reaping) go through the ORM.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, Select, select

from sweeper import SweeperError
from sweeper.messages import (Action, ClaimRequest, CompleteReport, Directive, FailReport, FailureKind, HeartbeatRequest,
                              MetricsReport, ReleaseReport, SweepStatus, TrialState)

from api import lifecycle
from api.claims import statements as sql
from api.lifecycle import Caller, TrialEvent, TrialLife
from api.models import SweepRow, TrialEpochRow, TrialRow
from api.storage.base import (LeaseConflictError, SweepPlan, TrialNotFoundError, finite, first_line, is_row_id,
                              life_of, spec_limit, take)
from api.storage.population import PopulationStore, first_lineage, is_pbt

logger = logging.getLogger("api.storage")

WORKER_LOST = "worker lost"
"""The error of a trial whose worker stopped renewing its lease."""

_RETRIED_KINDS = (FailureKind.crash, FailureKind.io)
"""Failures that are no fault of the configuration: retried while attempts remain, whatever the report says."""


@dataclass(frozen=True)
class Claimed:
    """A trial just claimed (or claimed again) by a worker, and its sweep's plan (its spec, parsed and stored)."""

    trial: sql.TrialRecord
    plan: SweepPlan



class TrialLeases(PopulationStore):
    """The worker protocol on trials, and lease expiry."""

    def claim(self, request: ClaimRequest) -> Claimed | None:
        """Give the worker a trial to run, or None when there is no work.

        In order: reap expired leases; hand a worker the trial it already holds (a worker restarted
        under the same id resumes its own trial first, under a new lease token that fences off whatever
        process held it before); else the
        oldest pending trial of a running sweep; else generate the next trial of the oldest running
        sweep that has some left. Only sweeps whose `gpus_per_trial` is at most the worker's `gpus` are
        considered (a filter in the SQL). The worker is recorded as seen, with its host and GPUs.
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
                     or self._next_pending_trial(connection, request.worker_id, request.gpus, now)
                     or self._generate_next_trial(connection, request.worker_id, request.gpus, now))
            return None if trial is None else self._claimed(connection, trial)

    def heartbeat(self, trial_id: int, request: HeartbeatRequest) -> Directive:
        """Extend the worker's lease on its trial; the answer says "cancel" once its sweep has ended."""
        with self._session.begin():
            connection = self._session.connection()
            _, step = self._lease_holder(connection, trial_id, TrialEvent.heartbeat,
                                         Caller(request.worker_id, request.lease_token), sql.LEASE_HOLDER_ALONE)
            now = self._clock()
            self._seen(request.worker_id, now, connection=connection)
            if not step.repeated:  # a pruned trial has no lease left to extend
                self._update_trial(connection, trial_id, lease_expires_at=now + self._policy.lease)
            return Directive(action=step.action)

    def report_metrics(self, trial_id: int, report: MetricsReport) -> Directive:
        """Store one epoch's metrics and extend the lease; with a stopping rule, judge the trial.

        Stored once per (trial, epoch): a trial resumed from a checkpoint reports its later epochs again,
        and a repeated epoch replaces the earlier report. The stopping rule's decision on an epoch is stored
        with it, before the answer is sent: the same epoch reported again gets the same answer, from any
        server process, after any restart. A pruned trial ends here; its worker stops after this epoch.
        """
        with self._session.begin():
            connection = self._session.connection()
            caller = Caller(report.worker_id, report.lease_token)
            held, step = self._lease_holder(connection, trial_id, TrialEvent.report, caller, sql.LEASE_HOLDER_ALONE)
            if step.repeated:  # the report that pruned it, sent again
                return Directive(action=step.action)
            now = self._clock()
            self._seen(report.worker_id, now, connection=connection)
            values = {"metrics": finite(report.metrics), "reported_at": now}
            stored = connection.execute(sql.EPOCH_DECISION, {"trial": trial_id, "epoch": report.epoch}).first()
            if stored is None:
                connection.execute(sql.INSERT_EPOCH, {"trial_id": trial_id, "epoch": report.epoch, **values})
            else:
                connection.execute(sql.UPDATE_EPOCH, {"row": stored.id, **values})
                self._loaded_copy_takes(TrialEpochRow, stored.id, values)
            self._update_trial(connection, trial_id, lease_expires_at=now + self._policy.lease)
            if step.action != Action.continue_:
                return Directive(action=step.action)
            try:
                plan = self._plan(connection, held.sweep_id)
            except SweeperError:  # its spec no longer parses (a model plugin gone): no rule can judge it
                return Directive(action=step.action)
            if not is_pbt(plan) and not plan.spec.stops_early:
                return Directive(action=step.action)
            # The report is judged among the sweep's others, and may prune or end the sweep: the sweep's
            # reports take turns on its row from here (its status read again, under the lock).
            held, step = self._lease_holder(connection, trial_id, TrialEvent.report, caller)
            if step.action != Action.continue_:
                return Directive(action=step.action)
            if is_pbt(plan):
                try:
                    return self._judge_member(connection, held, plan, report.epoch, stored)
                except Exception:
                    # As for a stopping rule: the epoch is kept, unjudged, and the member trains on.
                    logger.exception("sweep %d trial %d (id %d): the pbt decision failed on epoch %d; it goes on",
                                     held.sweep_id, held.index + 1, held.id, report.epoch)
                    return Directive(action=Action.continue_)
            if stored is not None and stored.decision is not None:
                decision = stored.decision  # answered before: the same answer
            else:
                try:
                    decision = self._judge(connection, held, plan, report.epoch)
                except Exception:
                    # A fault in the stopping rule must not stop the fleet's training: the epoch is kept,
                    # unjudged, and the trial goes on (its next report is judged afresh).
                    logger.exception("trial %d: the %s rule failed on epoch %d; it goes on", held.id,
                                     plan.spec.stopping.rule if plan.spec.stopping else "stopping", report.epoch)
                    return Directive(action=Action.continue_)
            if decision.get("action") != Action.prune:
                return Directive(action=Action.continue_)
            self._prune(connection, held, report, decision, now)
            return Directive(action=Action.prune)

    def _judge(self, connection: Connection, held: Row[Any], plan: SweepPlan, epoch: int) -> dict[str, Any]:
        """The stopping rule's decision on the trial after `epoch`, stored with the epoch's report."""
        assert plan.search is not None
        metric = plan.spec.objective.metric
        curve = {row.epoch + 1: math.nan if row.value is None else float(row.value)
                 for row in connection.execute(sql.trial_curve(metric), {"trial": held.id})}
        decision, attrs = plan.search.decide(connection, held.index, epoch, curve)
        stored = decision.stored()
        connection.execute(sql.STORE_DECISION, {"trial": held.id, "epoch_index": epoch, "decision": stored})
        if attrs != (held.search_state or {}):
            self._update_trial(connection, held.id, search_state=attrs)
        return stored

    def _prune(self, connection: Connection, held: Row[Any], report: MetricsReport, decision: dict[str, Any],
               now: datetime) -> None:
        step = lifecycle.apply(life_of(held), TrialEvent.prune, sweep=held.sweep_status,
                               caller=Caller(report.worker_id, report.lease_token))
        reason = str(decision.get("reason") or "pruned by the stopping rule")
        logger.info("sweep %d trial %d (id %d) pruned after epoch %d: %s", held.sweep_id, held.index + 1, held.id,
                    report.epoch + 1, reason)
        # It ends here, with what it reached: its worker's last call may come after the sweep has completed
        # (a pruned last trial completes it), or, across a server restart, much later. That call's metrics
        # replace these.
        self._update_trial(connection, held.id, state=step.trial.state, lease_end=step.trial.lease_end,
                           lease_expires_at=None, finished_at=now, pruned_at_epoch=report.epoch,
                           prune_reason=reason, metrics=finite(report.metrics))
        if held.sweep_consecutive_failures:  # a pruned trial ran: it breaks a run of failures
            self._update_sweep(connection, held.sweep_id, consecutive_failures=0)
        if held.sweep_next_index >= held.sweep_total_trials:
            if connection.execute(sql.FINISH_SWEEP, {"sweep": held.sweep_id, "now": now}).rowcount:
                self._loaded_copy_takes(SweepRow, held.sweep_id, {"status": SweepStatus.completed, "finished_at": now})

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
                                       "metrics": finite(report.metrics), "lease_expires_at": None,
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
                    self._sweep_finished(connection, held.sweep_id)
                    return sql.trial_record(held, **changes)
            self._member_ended(connection, held.sweep_id)
            return sql.trial_record(held, **changes)

    def fail(self, trial_id: int, report: FailReport) -> TrialRow:
        """Record a failure with its kind and traceback.

        A retryable failure, a crash (the worker process died) or an io failure (its logs or checkpoint
        could not be written): nothing says the configuration is at fault, so it goes back to pending
        while the sweep's max_attempts allow; anything else (an error, NaN, out of memory) fails for good
        and counts towards the sweep's max_failures. The same report again (same token) changes nothing.
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
            if trial.state.finished and sweep.status in lifecycle.OPEN:
                self._session.flush()
                self._member_ended(self._session.connection(), trial.sweep_id)
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
            logger.info("sweep %d trial %d (id %d) released by worker %r after %d epoch(s): %s", trial.sweep_id,
                        trial.number, trial.id, report.worker_id, report.epochs_done,
                        first_line(report.reason, "no reason given"))
            take(trial, step.trial)
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

    def _lease_expired(self, connection: Connection, now: datetime) -> bool:
        """Whether any lease has expired, asked once per transaction: a batch of claims reaps once, first."""
        transaction = self._session.get_transaction()
        if transaction is self._probed_in:
            return False
        self._probed_in = transaction
        return connection.execute(sql.EXPIRED_LEASE, {"now": now}).first() is not None

    def _claimed(self, connection: Connection, trial: sql.TrialRecord) -> Claimed:
        return Claimed(trial, self._plan(connection, trial.sweep_id))

    def _held_by(self, connection: Connection, worker_id: str, now: datetime) -> sql.TrialRecord | None:
        """The running trial this worker already holds, its lease renewed, if its sweep goes on.

        A held trial whose sweep ended while its worker was away (restarting, say) is cancelled here:
        the worker must not start it again.
        """
        for row in connection.execute(sql.HELD_BY, {"worker": worker_id}).all():
            step = lifecycle.apply(life_of(row), TrialEvent.reclaim, sweep=row.sweep_status,
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
    def _lease_holder(connection: Connection, trial_id: int, event: TrialEvent, caller: Caller,
                      statement: Select[Any] = sql.LEASE_HOLDER) -> tuple[Row[Any], lifecycle.Step]:
        """The trial's row with its sweep's columns (sql.LEASE_HOLDER, or another lock of the same columns),
        locked, and `event` from `caller` on it.

        LeaseConflictError, and nothing changes, unless the caller holds the current lease (or repeats the
        report that ended it). A lease past its expiry still counts until it is reaped.
        """
        row = connection.execute(statement, {"trial": trial_id}).first() \
            if is_row_id(trial_id) else None
        if row is None:
            raise TrialNotFoundError(trial_id)
        try:
            return row, lifecycle.apply(life_of(row), event, sweep=row.sweep_status, caller=caller)
        except lifecycle.LeaseConflict as conflict:
            raise LeaseConflictError(f"trial {trial_id} {conflict}", conflict.reason) from None

    def _end_attempt(self, trial: TrialRow, sweep: SweepRow, step: lifecycle.Step, now: datetime) -> None:
        """Store an attempt that did not succeed (a failure or a lost lease), as the lifecycle's step says."""
        take(trial, step.trial)
        trial.lease_expires_at = None
        if trial.state.finished:
            trial.finished_at = now
        if step.failed_for_good:
            self._count_failure(sweep, trial, now)

    def _reap_expired_leases(self, now: datetime) -> int:
        expired = self._session.scalars(
            select(TrialRow).where(TrialRow.state == TrialState.running, TrialRow.lease_expires_at < now)
            .order_by(TrialRow.id).with_for_update(skip_locked=True)).all()
        for trial in expired:
            sweep = self._sweep(trial.sweep_id, lock=True)
            logger.warning("sweep %d trial %d (id %d): worker %r lost its lease (attempt %d of %d)", trial.sweep_id,
                           trial.number, trial.id, trial.worker_id, trial.attempts, spec_limit(sweep, "max_attempts"))
            trial.error, trial.failure_kind, trial.traceback = WORKER_LOST, FailureKind.crash, None
            self._end_attempt(trial, sweep, self._apply(trial, sweep, TrialEvent.expire), now)
            if trial.state.finished and sweep.status in lifecycle.OPEN:
                self._session.flush()
                self._member_ended(self._session.connection(), trial.sweep_id)
        return len(expired)

    def _next_pending_trial(self, connection: Connection, worker_id: str, gpus: int,
                            now: datetime) -> sql.TrialRecord | None:
        """The oldest pending trial of a running sweep that fits a worker with `gpus` GPUs, now running for the
        worker (one more attempt); if that sweep is Population Based Training, its member whose turn it is
        (`_next_member`) instead."""
        row = connection.execute(sql.NEXT_PENDING, {"gpus": gpus}).first()
        if row is None:
            return None
        if is_pbt(self._plan(connection, row.sweep_id)):
            # Members take turns: the one with the fewest epochs done first, unstarted ones before all.
            return self._next_member(connection, row.sweep_id, worker_id, now)
        return self._start_pending(connection, row, worker_id, now)

    def _next_member(self, connection: Connection, sweep_id: int, worker_id: str,
                     now: datetime) -> sql.TrialRecord | None:
        """The member of a pbt sweep a worker should train next: a new one while any is unstarted, else the
        pending one with the fewest epochs done (the lowest number among equals), now running for the worker."""
        sweep = connection.execute(sql.SWEEP_TO_GENERATE, {"sweep": sweep_id}).first()
        if sweep is not None and sweep.next_index < sweep.total_trials:
            generated = self._generate_trial(connection, sweep, worker_id, now)
            if generated is not None:
                return generated
        row = connection.execute(sql.NEXT_MEMBER, {"sweep": sweep_id}).first()
        return None if row is None else self._start_pending(connection, row, worker_id, now)

    def _start_pending(self, connection: Connection, row: Row[Any], worker_id: str,
                       now: datetime) -> sql.TrialRecord:
        """The pending trial in `row`, now running for the worker (one more attempt)."""
        claimed = lifecycle.apply(life_of(row), TrialEvent.claim, sweep=SweepStatus.running,
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

    def _generate_next_trial(self, connection: Connection, worker_id: str, gpus: int,
                             now: datetime) -> sql.TrialRecord | None:
        """Create trial `next_index` of the oldest running sweep with trials left that fits a worker with `gpus`
        GPUs, running for the worker.

        The strategy is a pure function of the index, so after a restart the sweep simply goes on
        with the stored next_index: no trial is skipped or repeated.
        """
        while (sweep := connection.execute(sql.NEXT_SWEEP, {"gpus": gpus}).first()) is not None:
            trial = self._generate_trial(connection, sweep, worker_id, now)
            if trial is not None:
                return trial
        return None

    def _generate_trial(self, connection: Connection, sweep: Row[Any], worker_id: str,
                        now: datetime) -> sql.TrialRecord | None:
        """Create trial `next_index` of `sweep` (its id, next_index and total_trials), running for the worker;
        None if the sweep cannot generate it (it is marked failed)."""
        search_state: dict[str, Any] | None = None
        try:
            plan = self._plan(connection, sweep.id)
            if plan.strategy.total < sweep.total_trials:  # extended, by another server process maybe
                self._plans.forget(sweep.id)
                plan = self._plan(connection, sweep.id)
            if plan.spec.search.adaptive:
                assert plan.search is not None
                proposal = plan.search.propose(connection, sweep.next_index)
                hparams, search_state = proposal.config, proposal.trial_state
                if proposal.sweep_state is not None:
                    self._update_sweep(connection, sweep.id, search_state=proposal.sweep_state)
            else:
                hparams = plan.strategy.config_at(sweep.next_index)
                if is_pbt(plan):
                    search_state = first_lineage(hparams)
        except (SweeperError, IndexError) as error:
            # E.g. its model was unregistered since: the sweep cannot go on, the others can.
            logger.error("sweep %d cannot generate trial %d, marking it failed: %s", sweep.id,
                         sweep.next_index + 1, error)
            self._update_sweep(connection, sweep.id, status=SweepStatus.failed, finished_at=now,
                               status_reason=f"cannot generate trial {sweep.next_index + 1}: {error}")
            self._sweep_finished(connection, sweep.id)
            return None
        if connection.execute(sql.ADVANCE_SWEEP, {"sweep": sweep.id, "index": sweep.next_index}).rowcount != 1:
            raise RuntimeError(f"sweep {sweep.id}'s trial {sweep.next_index} was generated by another claim")
        self._loaded_copy_takes(SweepRow, sweep.id, {"next_index": sweep.next_index + 1})
        claimed = lifecycle.apply(TrialLife(TrialState.pending), TrialEvent.claim, sweep=SweepStatus.running,
                                  caller=Caller(worker_id, 0)).trial
        values: dict[str, Any] = {
            "sweep_id": sweep.id, "index": sweep.next_index, "state": claimed.state, "hparams": hparams,
            "metrics": {}, "attempts": claimed.attempts, "worker_id": claimed.worker_id,
            "lease_expires_at": now + self._policy.lease, "lease_token": claimed.lease_token, "lease_end": None,
            "error": None, "failure_kind": None, "traceback": None, "search_state": search_state,
            "pruned_at_epoch": None, "prune_reason": None, "created_at": now, "started_at": now,
            "finished_at": None}
        [trial_id] = connection.execute(sql.INSERT_TRIAL, values).inserted_primary_key
        return sql.TrialRecord(id=trial_id, **values)

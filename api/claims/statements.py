"""The worker protocol's SQL (claim, heartbeat, metrics, complete), as Core statements built once.

Claims are the server's hottest path, run by every worker between every two trials. Through the ORM a
claim took a dozen statements, each compiled, autoflushed and turned into objects; these are plain
Core statements on the request's connection, built once at import so SQLAlchemy reuses their cache
keys and compiled SQL, with values passed as parameters. UPDATEs without a SET clause take theirs from
the parameters' column names (`connection.execute(UPDATE_TRIAL, {"trial": 3, "state": ...})`).

FOR UPDATE (SKIP LOCKED for pending trials) locks the rows read on databases that have it; SQLite
renders none, its BEGIN IMMEDIATE already makes each transaction the only writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Table, bindparam, exists, func, select
from sqlalchemy.engine import Row

from sweeper.messages import FailureKind, SweepStatus, TrialState

from api.lifecycle import TrialEvent
from api.models import SweepRow, TrialEpochRow, TrialRow, WorkerRow, member_lineage

TRIALS: Table = TrialRow.__table__  # type: ignore[assignment]
SWEEPS: Table = SweepRow.__table__  # type: ignore[assignment]
WORKERS: Table = WorkerRow.__table__  # type: ignore[assignment]
EPOCHS: Table = TrialEpochRow.__table__  # type: ignore[assignment]

_ACTIVE = (TrialState.pending, TrialState.running)
_OPEN = (SweepStatus.running, SweepStatus.paused)
_OF_TRIAL = SWEEPS.c.id == TRIALS.c.sweep_id

# -- workers

UPDATE_WORKER = WORKERS.update().where(WORKERS.c.id == bindparam("worker"))
INSERT_WORKER = WORKERS.insert()
KNOWN_WORKERS = select(WORKERS.c.id).where(WORKERS.c.id.in_(bindparam("workers", expanding=True)))

# -- claiming

EXPIRED_LEASE = (select(TRIALS.c.id)
                 .where(TRIALS.c.state == TrialState.running, TRIALS.c.lease_expires_at < bindparam("now"))
                 .limit(1))
"""Whether any lease has expired: one index probe (ix_trials_state_lease), so reaping costs nothing when none has."""

HELD_BY = (select(TRIALS, SWEEPS.c.status.label("sweep_status"))
           .join(SWEEPS, _OF_TRIAL)
           .where(TRIALS.c.state == TrialState.running, TRIALS.c.worker_id == bindparam("worker"))
           .order_by(TRIALS.c.id).with_for_update(of=TRIALS))
"""The running trials a worker holds, oldest first, with their sweeps' status (ix_trials_worker_state)."""

_FITS_WORKER = SWEEPS.c.gpus_per_trial <= bindparam("gpus")
"""The sweep's trials fit the claiming worker: it has at least the sweep's GPUs per trial."""

NEXT_PENDING = (select(TRIALS)
                .join(SWEEPS, _OF_TRIAL)
                .where(TRIALS.c.state == TrialState.pending, SWEEPS.c.status == SweepStatus.running, _FITS_WORKER)
                .order_by(TRIALS.c.id).limit(1).with_for_update(of=TRIALS, skip_locked=True))
"""The oldest pending trial of a running sweep that fits the worker (ix_trials_state_sweep: finished trials
are never read)."""

START_PENDING = TRIALS.update().where(TRIALS.c.id == bindparam("trial"), TRIALS.c.state == TrialState.pending)
"""Compare-and-set: a pending trial becomes running; it matches no row if another claim took it first."""

NEXT_SWEEP = (select(SWEEPS.c.id, SWEEPS.c.next_index, SWEEPS.c.total_trials)
              .where(SWEEPS.c.status == SweepStatus.running, SWEEPS.c.next_index < SWEEPS.c.total_trials,
                     _FITS_WORKER)
              .order_by(SWEEPS.c.id).limit(1).with_for_update())
"""The oldest running sweep with trials left to generate that fit the worker."""

ADVANCE_SWEEP = (SWEEPS.update()
                 .where(SWEEPS.c.id == bindparam("sweep"), SWEEPS.c.next_index == bindparam("index"))
                 .values(next_index=SWEEPS.c.next_index + 1))
"""Compare-and-set on next_index: trial `index` is generated once; it matches no row if it already was."""

INSERT_TRIAL = TRIALS.insert()

SWEEP_TO_GENERATE = (select(SWEEPS.c.id, SWEEPS.c.next_index, SWEEPS.c.total_trials)
                     .where(SWEEPS.c.id == bindparam("sweep"), SWEEPS.c.status == SweepStatus.running)
                     .with_for_update())
"""One running sweep's generation counters (a pbt sweep starts its members before resuming any)."""

# -- Population Based Training (api.storage.population)

EPOCHS_DONE = (select(func.coalesce(func.max(EPOCHS.c.epoch) + 1, 0)).where(EPOCHS.c.trial_id == TRIALS.c.id)
               .correlate(TRIALS).scalar_subquery())
"""A trial's epochs done: its last reported epoch + 1, or 0."""

NEXT_MEMBER = (select(TRIALS)
               .where(TRIALS.c.sweep_id == bindparam("sweep"), TRIALS.c.state == TrialState.pending)
               .order_by(EPOCHS_DONE, TRIALS.c.index).limit(1).with_for_update(skip_locked=True))
"""A pbt sweep's pending member with the fewest epochs done: members take turns, the one behind first."""

SWEEP_SEARCH_STATE = (select(SWEEPS.c.status, SWEEPS.c.next_index, SWEEPS.c.total_trials, SWEEPS.c.search_state)
                      .where(SWEEPS.c.id == bindparam("sweep")))

MEMBERS_STATE = (select(TRIALS.c.id, TRIALS.c.index, TRIALS.c.state, EPOCHS_DONE.label("epochs_done"))
                 .where(TRIALS.c.sweep_id == bindparam("sweep")))

MEMBER_DECISIONS = (select(EPOCHS.c.trial_id, EPOCHS.c.epoch, EPOCHS.c.decision)
                    .join(TRIALS, TRIALS.c.id == EPOCHS.c.trial_id)
                    .where(TRIALS.c.sweep_id == bindparam("sweep"), EPOCHS.c.decision.is_not(None)))
"""Every decision on a pbt sweep's boundary reports: which epochs each member has been judged at."""

SWEEP_SPEC = select(SWEEPS.c.spec, SWEEPS.c.run_digits).where(SWEEPS.c.id == bindparam("sweep"))

# -- reports on a held trial

LEASE_HOLDER = (select(TRIALS, SWEEPS.c.status.label("sweep_status"),
                       SWEEPS.c.next_index.label("sweep_next_index"),
                       SWEEPS.c.total_trials.label("sweep_total_trials"),
                       SWEEPS.c.consecutive_failures.label("sweep_consecutive_failures"))
                .join(SWEEPS, _OF_TRIAL)
                .where(TRIALS.c.id == bindparam("trial"))
                .with_for_update(of=(TRIALS, SWEEPS)))
"""A trial with what a report on it needs from its sweep, both locked: one statement, by primary key. The
sweep's lock makes one sweep's reports take turns: each judges the trial among the others' stored reports,
and the report that ends the last trial sees every other one ended."""

LEASE_HOLDER_ALONE = LEASE_HOLDER.with_for_update(of=TRIALS)
"""The same with only the trial locked, for a heartbeat, and for an epoch report until it is to be judged
(a stopping rule, pbt): each renews its own lease and reads its sweep's status, so a fleet's heartbeats and
unjudged reports neither queue behind one sweep's row nor deadlock with claims on it."""

UPDATE_TRIAL = TRIALS.update().where(TRIALS.c.id == bindparam("trial"))
UPDATE_SWEEP = SWEEPS.update().where(SWEEPS.c.id == bindparam("sweep"))

FINISH_SWEEP = (SWEEPS.update()
                .where(SWEEPS.c.id == bindparam("sweep"), SWEEPS.c.status.in_(_OPEN),
                       SWEEPS.c.next_index >= SWEEPS.c.total_trials,
                       ~exists().where(TRIALS.c.sweep_id == SWEEPS.c.id, TRIALS.c.state.in_(_ACTIVE)))
                .values(status=SweepStatus.completed, finished_at=bindparam("now")))
"""The sweep is completed if every trial was handed out and none is pending or running."""

EPOCH_DECISION = (select(EPOCHS.c.id, EPOCHS.c.decision)
                  .where(EPOCHS.c.trial_id == bindparam("trial"), EPOCHS.c.epoch == bindparam("epoch")))
"""An epoch's report, if stored, with the stopping rule's decision on it."""
STORE_DECISION = (EPOCHS.update()
                  .where(EPOCHS.c.trial_id == bindparam("trial"), EPOCHS.c.epoch == bindparam("epoch_index")))


def trial_curve(metric: str) -> Select[Any]:
    """A trial's `metric` at each epoch it reported (the stopping rule's input)."""
    return (select(EPOCHS.c.epoch, TrialEpochRow.metrics[metric].as_float().label("value"))
            .where(EPOCHS.c.trial_id == bindparam("trial")).order_by(EPOCHS.c.epoch))

UPDATE_EPOCH = EPOCHS.update().where(EPOCHS.c.id == bindparam("row"))
INSERT_EPOCH = EPOCHS.insert()


@dataclass(frozen=True, slots=True)
class TrialRecord:
    """A trial as a Core statement read or wrote it: TrialRow's columns without the ORM's bookkeeping.

    What the worker protocol returns; building a TrialRow object costs more than a claim's statements.
    """

    id: int
    sweep_id: int
    index: int
    state: TrialState
    hparams: dict[str, Any]
    metrics: dict[str, Any]
    attempts: int
    worker_id: str | None
    lease_expires_at: datetime | None
    lease_token: int
    lease_end: TrialEvent | None
    error: str | None
    failure_kind: FailureKind | None
    traceback: str | None
    search_state: dict[str, Any] | None
    pruned_at_epoch: int | None
    prune_reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def number(self) -> int:
        """The trial's number within its sweep, from 1 (TrialRow.number)."""
        return self.index + 1

    @property
    def lineage(self) -> list[dict[str, Any]] | None:
        return member_lineage(self.search_state)


def trial_record(row: Row[Any], **changes: Any) -> TrialRecord:
    """The trial in a row selected with all of TRIALS' columns, with `changes` (just written) applied."""
    mapping = row._mapping
    values = {column.key: mapping[column] for column in TRIALS.c}
    values.update(changes)
    return TrialRecord(**values)

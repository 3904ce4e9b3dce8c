"""Database rows: sweeps, their trials, each trial's per-epoch metrics, and the workers seen."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Enum, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from sweeper import log_location
from sweeper.messages import FailureKind, SweepStatus, TrialState

from api.lifecycle import TrialEvent


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    SQLite keeps no time zone, so values are stored as naive UTC and tagged UTC again when read;
    lease comparisons then never mix naive and aware times.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"datetimes must be time-zone aware, but got naive {value.isoformat()}")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def run_name(run_digits: int | None, trial_id: int, number: int) -> str:
    """A trial's folder and TensorBoard run name under its sweep's folder: `trial-0007` (log_location.run_name),
    or its id where its sweep's `run_digits` is None (created before trials were named by number)."""
    return str(trial_id) if run_digits is None else log_location.run_name(number, run_digits)


def member_lineage(search_state: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """A Population Based Training member's segments (PbtSegment's fields), oldest first, from its search_state;
    None for a trial of another strategy."""
    stored = (search_state or {}).get("pbt")
    return list(stored.get("segments", [])) if isinstance(stored, dict) else None


class Base(DeclarativeBase):
    type_annotation_map = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        # Stored as plain strings (no native enum, no CHECK), so a new state needs no migration.
        SweepStatus: Enum(SweepStatus, native_enum=False, length=16),
        TrialState: Enum(TrialState, native_enum=False, length=16),
        FailureKind: Enum(FailureKind, native_enum=False, length=16),
        TrialEvent: Enum(TrialEvent, native_enum=False, length=16),
    }

# Ids name workers' calls, and the TensorBoard folders of sweeps (and of trials of sweeps from before numbered
# folders), so SQLite must never reuse a deleted row's id.
_NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


class SweepRow(Base):
    __tablename__ = "sweeps"
    __table_args__ = (_NEVER_REUSE_IDS,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[SweepStatus] = mapped_column(default=SweepStatus.running, index=True)
    spec: Mapped[dict[str, Any]]
    """The normalised spec (`SweepSpec.to_json()`); the strategy is rebuilt from it after a restart."""
    total_trials: Mapped[int]
    next_index: Mapped[int] = mapped_column(default=0)
    """How many trials the strategy has handed out: trial k is created when first claimed."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    status_reason: Mapped[str | None] = mapped_column(Text)
    """Why the sweep ended early (failed or cancelled); None while it runs or once it completed."""
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    """Trials failed for good since the last completed one; the sweep fails at its spec's max_failures."""
    search_state: Mapped[dict[str, Any] | None]
    """An adaptive sampler's study-wide state (Optuna's study system attributes), None until it keeps any."""
    run_digits: Mapped[int | None]
    """How many digits its trials' run names (folders, TensorBoard runs) pad their numbers to: `trial-0007`
    (sweeper.log_location.run_name), fixed when the sweep is created. None for a sweep created before trials
    were named by number, whose trial folders are named by trial id and stay so."""
    gpus_per_trial: Mapped[int] = mapped_column(default=1, server_default="1")
    """Its spec's `train.gpus_per_trial`, as a column: claims hand its trials only to workers with at least this
    many GPUs (`WorkerRow.gpus`), a filter in the claim's SQL."""

    def run_name(self, trial_id: int, number: int) -> str:
        """The folder and TensorBoard run name of the sweep's trial `trial_id`, number `number`."""
        return run_name(self.run_digits, trial_id, number)


class TrialRow(Base):
    __tablename__ = "trials"
    __table_args__ = (
        # A trial index is generated once per sweep; a second insert would be a lost update.
        UniqueConstraint("sweep_id", "index", name="uq_trials_sweep_index"),
        # The claim path's lookups, each an index probe however many finished trials there are: pending
        # trials by sweep, a worker's running trials, and whether any running trial's lease has expired.
        Index("ix_trials_state_sweep", "state", "sweep_id"),
        Index("ix_trials_worker_state", "worker_id", "state"),
        Index("ix_trials_state_lease", "state", "lease_expires_at"),
        _NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    """Global, so it is unique across sweeps: the worker protocol's name for the trial. People name it by its
    sweep and `number`, as do its TensorBoard folder and session (SweepRow.run_name)."""
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    index: Mapped[int]
    state: Mapped[TrialState] = mapped_column(default=TrialState.pending)
    hparams: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """The final metrics, reported on completion; empty until then."""
    attempts: Mapped[int] = mapped_column(default=0)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    lease_token: Mapped[int] = mapped_column(default=0, server_default="0")
    """The latest claim's token (api.lifecycle): every call on the trial must carry it; 0 before any claim."""
    lease_end: Mapped[TrialEvent | None]
    """The report or event that ended the latest lease (complete, fail, release, expire, ...); None while it
    runs. A report repeated with the same token is answered with the trial as stored."""
    error: Mapped[str | None] = mapped_column(Text)
    """The latest failed attempt's error, kept while a retry runs; cleared when the trial completes."""
    failure_kind: Mapped[FailureKind | None]
    traceback: Mapped[str | None] = mapped_column(Text)
    search_state: Mapped[dict[str, Any] | None]
    """What the sampler and the stopping rule keep of this trial (Optuna's trial system attributes: a
    CMA-ES generation, the rungs it reached), so that a restarted server rebuilds the same study."""
    pruned_at_epoch: Mapped[int | None]
    """The epoch (from 0) after which the stopping rule pruned the trial; None unless it did."""
    prune_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    """When the latest attempt started."""
    finished_at: Mapped[datetime | None]

    @property
    def number(self) -> int:
        """The trial's number within its sweep, from 1: what people see on the page, the CLI and TensorBoard."""
        return self.index + 1

    @property
    def lineage(self) -> list[dict[str, Any]] | None:
        return member_lineage(self.search_state)


class TrialEpochRow(Base):
    __tablename__ = "trial_epochs"
    __table_args__ = (UniqueConstraint("trial_id", "epoch", name="uq_trial_epochs_trial_epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"))
    epoch: Mapped[int]
    metrics: Mapped[dict[str, Any]]
    reported_at: Mapped[datetime] = mapped_column(default=utcnow)
    decision: Mapped[dict[str, Any] | None]
    """The stopping rule's answer to this report ({"action": ..., "reason": ...}), or Population Based
    Training's at the end of a member's interval (continue, stop, or exploit with its `exploit`), stored before
    it was sent; None where nothing judged it."""


class WorkerRow(Base):
    """A worker process as last seen: recorded on its claims and every call it makes on a trial.

    Its state (idle, busy, lost) is derived when read, from the lease TTL and the trials it holds, so
    it can never disagree with them.
    """

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    """The worker's own id, as it sends it in every message."""
    host: Mapped[str | None] = mapped_column(String(255))
    """None until a claim of the worker's is recorded (heartbeats and reports carry no host)."""
    gpu: Mapped[str | None] = mapped_column(String(64))
    gpus: Mapped[int | None]
    """How many GPUs (a CPU worker: devices) it gives one trial, as its latest claim said
    (`ClaimRequest.gpus`); None until a claim of the worker's is recorded, counted as 1."""
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebSessionRow(Base):
    """A login of the web page: the cookie holds a random session id, this row only its hash.

    A database read therefore yields no session anyone could present. Logging out deletes the row;
    rows past `expires_at` are refused, and deleted at the next login.
    """

    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    """SHA-256 of the session id, in hex."""
    role: Mapped[str] = mapped_column(String(16))
    """admin or worker: the role of the token that logged in."""
    token_fingerprint: Mapped[str] = mapped_column(String(64))
    """An HMAC of the session's hash keyed by the token that logged in: the session holds only while that
    token is still the server's token for its role (api.web_sessions)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)

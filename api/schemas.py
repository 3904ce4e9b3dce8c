"""What the REST API answers with (and the one request body it bounds beyond the wire messages)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sweeper.messages import FailureKind, SweepStatus, TrialState

from api.repository import SweepSummary, TrialHistory, WorkerState, WorkerStatus

"""The largest epoch a database integer column holds on every backend."""


class TrialPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    """Unique across sweeps; the trial's session group name in TensorBoard."""
    sweep_id: int
    index: int
    """The trial's position in its sweep's search order."""
    state: TrialState
    hparams: dict[str, Any]
    metrics: dict[str, float | None]
    """Final metrics, empty until the trial completes; a non-finite value (a diverged loss) is null."""
    attempts: int
    worker_id: str | None
    error: str | None
    """The latest failed attempt's error (kept while a retry runs; cleared when the trial completes)."""
    failure_kind: FailureKind | None
    """What kind of failure that was: error, nan, oom, or crash (a worker process died or was lost)."""
    traceback: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_expires_at: datetime | None


class TrialsPublic(BaseModel):
    data: list[TrialPublic]
    count: int


class EpochMetrics(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    metrics: dict[str, float | None]


class TrialDetail(TrialPublic):
    history: list[EpochMetrics]
    """Per-epoch metrics, ordered by epoch."""

    @classmethod
    def from_history(cls, history: TrialHistory) -> TrialDetail:
        return cls(**TrialPublic.model_validate(history.trial).model_dump(),
                   history=[EpochMetrics.model_validate(row) for row in history.epochs])


class SweepPublic(BaseModel):
    id: int
    name: str
    status: SweepStatus
    spec: dict[str, Any]
    """The normalised spec, defaults filled in."""
    total_trials: int
    """How many trials the sweep runs: the space's size, or search.max_trials where that is smaller."""
    space_size: int | None
    """Distinct configurations in the search space (for grid search, the grid's size); null when intervals
    are sampled and the space is endless."""
    created_at: datetime
    finished_at: datetime | None
    reason: str | None
    """Why the sweep ended early (failed or cancelled); null otherwise."""
    trial_counts: dict[TrialState, int]
    """Trials by state, every state present; trials not yet handed out are in none of them."""
    best_trial: TrialPublic | None
    """The completed trial with the best objective, per the spec's goal."""

    @classmethod
    def from_summary(cls, summary: SweepSummary) -> SweepPublic:
        sweep = summary.sweep
        best = summary.best_trial
        return cls(id=sweep.id, name=sweep.name, status=sweep.status, spec=sweep.spec,
                   total_trials=sweep.total_trials, space_size=summary.space_size, created_at=sweep.created_at,
                   finished_at=sweep.finished_at, reason=sweep.status_reason, trial_counts=summary.trial_counts,
                   best_trial=None if best is None else TrialPublic.model_validate(best))


class SweepPlanPublic(BaseModel):
    """What a valid spec would run, before anything is created."""

    space_size: int | None
    """Distinct configurations in the search space (the grid's size); null when it is endless."""
    total_trials: int
    spec: dict[str, Any]
    """The normalised spec, defaults filled in."""


class SweepsPublic(BaseModel):
    data: list[SweepPublic]
    count: int
    """How many sweeps there are in all, not on this page."""


class WorkerPublic(BaseModel):
    id: str
    host: str | None
    """null until a claim of the worker's is recorded (heartbeats and reports carry no host)."""
    gpu: str | None
    """The GPU the worker is pinned to; null for a CPU worker."""
    state: WorkerState
    """idle or busy, or lost when it has made no call for longer than the lease."""
    trial_id: int | None
    """The running trial it holds."""
    first_seen_at: datetime
    last_heartbeat_at: datetime
    """Its latest call: a claim, a heartbeat, or a report on its trial."""

    @classmethod
    def from_status(cls, status: WorkerStatus) -> WorkerPublic:
        worker = status.worker
        return cls(id=worker.id, host=worker.host, gpu=worker.gpu, state=status.state, trial_id=status.trial_id,
                   first_seen_at=worker.first_seen_at, last_heartbeat_at=worker.last_seen_at)


class WorkersPublic(BaseModel):
    data: list[WorkerPublic]
    count: int
    """How many workers were ever seen, not on this page."""


class Health(BaseModel):
    status: Literal["ok"] = "ok"

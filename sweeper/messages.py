"""Messages that cross the process boundary between workers and the server.

The server (api/) and the workers (workers/) both speak these models over HTTP; neither imports the
other. Field names are the REST contract.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sweeper import log_location
from sweeper._spec import Objective, TrainSettings
from sweeper._text import Printable

WorkerId = Annotated[str, Field(min_length=1, max_length=200), Printable]


class TrialState(StrEnum):
    pending = "pending"
    running = "running"
    completed = "completed"
    failed = "failed"
    pruned = "pruned"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (TrialState.pending, TrialState.running)


class SweepStatus(StrEnum):
    running = "running"
    paused = "paused"
    completed = "completed"
    cancelled = "cancelled"
    failed = "failed"


class Action(StrEnum):
    """What the server tells a worker about its trial, in the answer to a heartbeat or an epoch report."""

    continue_ = "continue"
    """Keep training."""
    stop = "stop"
    """Stop at the end of this epoch and hand the trial back (release): another attempt resumes it."""
    prune = "prune"
    """Stop now: the trial will not win; it ends pruned with the metrics it reached."""
    cancel = "cancel"
    """Stop now: the sweep has ended."""
    exploit = "exploit"
    """Population Based Training: load another member's weights and optimizer state, saved after this epoch,
    and train on from the next epoch with new hparams; the `Directive`'s `exploit` says which and what."""


class LeaseConflictReason(StrEnum):
    """Why the server refused a call on a trial (409): the `reason` beside its `detail`."""

    not_running = "not_running"
    """The trial is no longer running (it ended, or went back to the queue)."""
    leased_to_another = "leased_to_another"
    """Another worker holds the trial now (the caller's lease expired and the trial was handed on)."""
    superseded = "superseded"
    """A later claim under the caller's own worker id holds the trial: another process uses that id."""


LeaseToken = Annotated[int, Field(ge=1, le=2**62)]
"""Names one claim of a trial: every claim (a reclaim by the same worker id too) issues a larger one, and
every later call on the trial carries it; a call with an older token is refused (409), so two processes
can never both act as the trial's holder."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClaimRequest(_Message):
    # An example for the OpenAPI docs.
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"worker_id": "gpu-box-1/0", "host": "gpu-box-1", "gpu": "0", "gpus": 1}]})

    worker_id: WorkerId
    host: Annotated[str, Field(min_length=1, max_length=255), Printable]
    gpu: Annotated[str, Field(max_length=64), Printable] | None = None
    """The worker's GPU, or its group of GPUs as CUDA_VISIBLE_DEVICES lists them ("0,1"); None on a CPU."""
    gpus: Annotated[int, Field(ge=0, le=64)] = 1
    """How many GPUs (or, on a CPU, devices) the worker can give one trial: it is handed only trials of
    sweeps whose `train.gpus_per_trial` is at most this. A worker from before this field counts as one."""


class PbtSegment(_Message):
    """One stretch of a Population Based Training member's life with the same hparams: its first segment
    (from epoch 0, no parent), then one more for every exploit."""

    segment: Annotated[int, Field(ge=1)]
    """1 for the member's first stretch, then 2, 3, ... after each exploit."""
    start_epoch: Annotated[int, Field(ge=0)]
    """The first epoch (from 0) trained with these hparams."""
    hparams: dict[str, Any]
    parent_trial_id: int | None = None
    """The member whose weights this segment started from (None for segment 1)."""
    parent_number: int | None = None
    parent_epoch: int | None = None
    """The epoch (from 0) after which the parent's weights were saved and copied: start_epoch - 1."""


class PbtMember(_Message):
    """What a worker needs to run a trial of a `strategy: pbt` sweep: a member of the population."""

    interval_epochs: Annotated[int, Field(ge=1)]
    """After every `interval_epochs` epochs (epoch indices interval-1, 2*interval-1, ...), the worker saves
    the member's weights and optimizer state to `snapshot_path(snapshot_dir, epoch)` before it reports
    the epoch: the file another member may be told to copy. It is never written again."""
    snapshot_dir: str
    """The member's snapshot folder (local or an object store URL), outside its checkpoint folder: a finished
    member's snapshots may still be copied. The server deletes the ones no member may still copy."""
    segments: Annotated[list[PbtSegment], Field(min_length=1)]
    """The member's lineage so far, oldest first; the last is in force. A retried member resumes from its
    checkpoint with the hparams of the segment its first epoch to train falls in."""


class Exploit(_Message):
    """The answer to a PBT member's report at the end of an interval when it is in the bottom quarter: copy
    a top-quarter member's weights and optimizer state saved after the same epoch, and train on from the
    next epoch as a new segment with `segment.hparams` (its mutable hparams explored)."""

    snapshot: str
    """The donor's snapshot file (`snapshot_path(<donor's snapshot_dir>, epoch)`): a path or an object store URL."""
    segment: PbtSegment
    """The segment that starts at the next epoch: its hparams, and the donor as its parent."""


class Assignment(_Message):
    """What a worker needs to run one trial."""

    trial_id: int
    sweep_id: int
    number: Annotated[int, Field(ge=1)]
    """The trial's number within its sweep, from 1: how people name it ("sweep 3 trial 7")."""
    hparams: dict[str, Any]
    model: str
    dataset: str
    objective: Objective
    train: TrainSettings
    logdir: str
    """The trial's own TensorBoard folder, `<server logdir>/<sweep_id>/trial-0007` (sweeper.log_location); its
    name is the trial's run name in TensorBoard and the name of its HParams session."""
    log_scaled: list[str] = []
    """Hparams searched on a log scale; the TensorBoard session also gets `log10_<name>` for each."""
    pbt: PbtMember | None = None
    """Set for a member of a Population Based Training sweep; None otherwise."""
    attempt: int = 1
    """Which attempt at the trial this is (1 for the first claim)."""
    checkpoint_dir: str = ""
    """The trial's checkpoint folder, beside its logs; a retried trial resumes from what is there."""
    heartbeat_seconds: float = 10.0
    """How often the worker extends its lease; the lease lasts longer than several of these."""
    lease_expires_at: datetime
    lease_token: LeaseToken
    """This claim's token: every later call on the trial carries it (see `LeaseToken`)."""

    @property
    def trial_name(self) -> str:
        """How logs name the trial: by sweep and number as people do, with its id for the server's records."""
        return f"sweep {self.sweep_id} trial {self.number} (id {self.trial_id})"


class HeartbeatRequest(_Message):
    # An example for the OpenAPI docs.
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"worker_id": "gpu-box-1/0", "lease_token": 1}]})

    worker_id: WorkerId
    lease_token: LeaseToken


class MetricsReport(_Message):
    # An example for the OpenAPI docs.
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"worker_id": "gpu-box-1/0", "lease_token": 1, "epoch": 3,
         "metrics": {"loss": 0.41, "val_loss": 0.45, "val_accuracy": 0.87, "learning_rate": 0.001}}]})

    worker_id: WorkerId
    lease_token: LeaseToken
    epoch: Annotated[int, Field(ge=0, le=1_000_000)]
    metrics: dict[str, float]


class CompleteReport(_Message):
    # An example for the OpenAPI docs.
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"worker_id": "gpu-box-1/0", "lease_token": 1,
         "metrics": {"loss": 0.2, "val_loss": 0.31, "val_accuracy": 0.93}}]})

    worker_id: WorkerId
    lease_token: LeaseToken
    metrics: dict[str, float]


class FailureKind(StrEnum):
    """Why a trial failed, which decides whether it is tried again."""

    error = "error"
    """An exception in model or data code: not retried unless the code marked it retryable."""
    nan = "nan"
    """The loss became NaN: not retried, the same configuration would diverge again."""
    oom = "oom"
    """Out of (GPU) memory: not retried on the same configuration."""
    crash = "crash"
    """The worker process died (signal or exit code): retried through its lease."""
    io = "io"
    """Reading or writing the trial's logs or checkpoint failed (a full disk, an object store away): the
    infrastructure's fault, not the configuration's, so it is retried."""


class FailReport(_Message):
    # An example for the OpenAPI docs.
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"worker_id": "gpu-box-1/0", "lease_token": 1, "error": "loss became NaN at epoch 3", "kind": "nan",
         "retryable": False}]})

    worker_id: WorkerId
    lease_token: LeaseToken
    error: Annotated[str, Field(max_length=65_536)]
    """One line or a short paragraph: what went wrong, e.g. "loss became NaN at epoch 3"."""
    retryable: bool = False
    kind: FailureKind = FailureKind.error
    traceback: Annotated[str, Field(max_length=262_144)] | None = None


class ReleaseReport(_Message):
    """A worker gives a trial back unfinished (it is shutting down): pending again, no attempt counted."""

    # An example for the OpenAPI docs.
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"worker_id": "gpu-box-1/0", "lease_token": 1, "reason": "SIGTERM: shutting down", "epochs_done": 4}]})

    worker_id: WorkerId
    lease_token: LeaseToken
    reason: Annotated[str, Field(max_length=65_536)]
    epochs_done: Annotated[int, Field(ge=0, le=1_000_000)] = 0


class Directive(_Message):
    """The server's answer to a heartbeat or a metrics report."""

    action: Action = Action.continue_
    exploit: Exploit | None = None
    """Set exactly when `action` is exploit (only ever in the answer to a PBT member's metrics report)."""

    @model_validator(mode="after")
    def _exploit_with_its_details(self) -> Directive:
        if (self.action == Action.exploit) != (self.exploit is not None):
            raise ValueError("exploit must be given exactly when action is exploit")
        return self


def snapshot_path(snapshot_dir: str, epoch: int) -> str:
    """The file a PBT member's weights and optimizer state are saved to after `epoch` (from 0):
    `<snapshot_dir>/epoch-000005.weights.h5`."""
    return log_location.join(snapshot_dir, f"epoch-{epoch:06d}.weights.h5")

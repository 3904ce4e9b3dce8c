"""What the REST API answers with, its errors included, and the error responses every route documents."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from sweeper.messages import FailureKind, PbtSegment, SweepStatus, TrialState

from api.search.importance import ImportanceEvaluator, Importances
from api.storage import ObjectiveSeries, SweepSummary, TrialHistory, WorkerState, WorkerStatus


class TrialPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    """Unique across sweeps: what the worker protocol and `GET /trials/{id}` name the trial by."""
    sweep_id: int
    number: int
    """The trial's number within its sweep, from 1 (index + 1): what the page, the CLI and TensorBoard show
    (its TensorBoard run and HParams session are `trial-0007`); `GET /sweeps/{id}/trials/{number}` reads it."""
    index: int
    """The trial's position in its sweep's search order, from 0."""
    state: TrialState
    hparams: dict[str, Any]
    metrics: dict[str, float | None]
    """Final metrics, empty until the trial completes (a pruned trial has those of the epoch that pruned it
    until its worker's last call sends its final ones); a non-finite value (a diverged loss) is null."""
    attempts: int
    worker_id: str | None
    error: str | None
    """The latest failed attempt's error (kept while a retry runs; cleared when the trial completes)."""
    failure_kind: FailureKind | None
    """What kind of failure that was: error, nan, oom, or crash (a worker process died or was lost)."""
    traceback: str | None
    pruned_at_epoch: int | None = None
    """The epoch (from 0) after which the sweep's stopping rule pruned the trial; null unless it did."""
    prune_reason: str | None = None
    """Why: the rung or epoch, the trial's value, the cutoff, and how many trials it was compared with."""
    lineage: list[PbtSegment] | None = None
    """A Population Based Training member's segments, oldest first: the hparams it trained with from each
    `start_epoch`, and for every segment after the first the member whose weights it copied (`parent_number`,
    `parent_trial_id`) after which epoch (`parent_epoch`). The last is in force (`hparams` is its). Null for a
    trial of another strategy."""
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_expires_at: datetime | None


class TrialsPublic(BaseModel):
    data: list[TrialPublic]
    count: int


class EpochMetrics(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={
        "examples": [{"epoch": 3, "metrics": {"loss": 0.41, "val_loss": 0.45, "val_accuracy": 0.87,
                                              "learning_rate": 0.001}}]})

    epoch: int
    metrics: dict[str, float | None]
    """What the trial logged that epoch, the learning rate it trained with included."""
    reported_at: datetime | None = None
    """When the epoch was reported (last reported, for an epoch trained again after a resume)."""
    decision: dict[str, Any] | None = None
    """The stopping rule's answer to this epoch's report ("continue" or "prune") and what it compared, or at
    the end of a PBT member's interval the answer it got ("continue", "stop" or "exploit", with the exploit's
    snapshot and new segment) and its `reason`; left out where nothing judged the epoch."""

    @model_serializer(mode="wrap")
    def _without_absent_decision(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("decision") is None:
            data.pop("decision", None)
        return data


class TrialDetail(TrialPublic):
    history: list[EpochMetrics]
    """Per-epoch metrics, ordered by epoch."""

    @classmethod
    def from_history(cls, history: TrialHistory) -> TrialDetail:
        return cls(**TrialPublic.model_validate(history.trial).model_dump(),
                   history=[EpochMetrics.model_validate(row) for row in history.epochs])


class WaitingForPublic(BaseModel):
    """Why a running sweep's trials are not being handed out: no connected worker can run them."""

    gpus_per_trial: int
    """The GPUs each of its trials needs (its spec's train.gpus_per_trial)."""
    most_gpus: int | None
    """The most GPUs any connected worker (seen within the lease TTL) gives a trial; null when no worker is
    connected."""
    message: str
    """The same in words: "a worker with 2 GPUs: the connected workers have at most 1"."""


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
    started_at: datetime | None
    """When its first trial started; null before any did."""
    finished_at: datetime | None
    reason: str | None
    """Why the sweep ended early (failed or cancelled); null otherwise. A sweep whose every trial failed
    ends failed with "no trial completed: N failed; the first, trial K: <its error>"."""
    error: str | None = None
    """The first trial to fail for good and its error's first line ("trial 2: FileNotFoundError: ..."), while
    the sweep runs and after it ended; null when no trial has failed."""
    trial_counts: dict[TrialState, int]
    """Trials by state, every state present; trials not yet handed out are in none of them."""
    best_trial: TrialPublic | None
    """The completed trial with the best objective, per the spec's goal; null for a multi-objective sweep,
    which has `pareto_front` instead."""
    pareto_front: list[int] | None = None
    """A multi-objective sweep's Pareto front: the ids of the completed trials that no other completed trial
    beats in every objective; null for a sweep with one objective."""
    pareto_front_numbers: list[int] | None = None
    """The same trials' numbers within the sweep, in the same order; null for a sweep with one objective."""
    waiting_for: WaitingForPublic | None = None
    """Set while the sweep runs with trials to hand out that no connected worker can run (a sweep of 2 GPUs
    per trial, and workers of 1); null otherwise."""

    @classmethod
    def from_summary(cls, summary: SweepSummary) -> SweepPublic:
        sweep, best, front = summary.sweep, summary.best_trial, summary.pareto_front
        return cls(id=sweep.id, name=sweep.name, status=sweep.status, spec=sweep.spec,
                   total_trials=sweep.total_trials, space_size=summary.space_size, created_at=sweep.created_at,
                   started_at=summary.started_at, finished_at=sweep.finished_at, reason=sweep.status_reason,
                   error=None if summary.first_failure is None else str(summary.first_failure),
                   trial_counts=summary.trial_counts,
                   best_trial=None if best is None else TrialPublic.model_validate(best),
                   pareto_front=None if front is None else [trial_id for trial_id, _ in front],
                   pareto_front_numbers=None if front is None else [number for _, number in front],
                   waiting_for=None if summary.waiting_for is None else WaitingForPublic(
                       gpus_per_trial=summary.waiting_for.gpus_per_trial, most_gpus=summary.waiting_for.most_gpus,
                       message=str(summary.waiting_for)))


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
    """How many sweeps there are in all (of the status asked for), not on this page."""


class ObjectivePoint(BaseModel):
    trial_id: int
    number: int
    """The trial's number within its sweep, from 1."""
    index: int
    value: float | None
    """The trial's objective; null when it reported no finite value for it."""


class ObjectivePublic(BaseModel):
    """Every completed trial's objective value, in index order: what a chart of the sweep needs, and no more."""

    metric: str
    goal: Literal["maximize", "minimize"]
    points: list[ObjectivePoint]

    @classmethod
    def from_series(cls, series: ObjectiveSeries) -> ObjectivePublic:
        # One validation of plain data: for 10,000 points, far cheaper than a model per point.
        return cls.model_validate({"metric": series.objective.metric, "goal": series.objective.goal, "points": [
            {"trial_id": point.trial_id, "number": point.index + 1, "index": point.index,
             "value": point.value} for point in series.points]})


class HParamImportance(BaseModel):
    hparam: str
    importance: float
    """Its share of the importance of all the hparams judged: they sum to 1."""


class ImportancePublic(BaseModel):
    """How much each searched hparam matters for the sweep's (first) objective, by Optuna's evaluators."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "metric": "val_accuracy", "goal": "maximize", "evaluator": "fanova", "completed": 40, "judged": 40,
        "importances": [{"hparam": "learning_rate", "importance": 0.71}, {"hparam": "units", "importance": 0.2},
                        {"hparam": "dropout", "importance": 0.09}], "reason": None}]})

    metric: str
    goal: Literal["maximize", "minimize"]
    evaluator: ImportanceEvaluator
    completed: int
    """The completed trials with a finite value of every objective."""
    judged: int
    """How many of them the evaluator judged: all, or for fANOVA a seeded sample of at most 200."""
    importances: list[HParamImportance]
    """Largest first; empty when `reason` says why (too few completed trials, or no hparam searched)."""
    reason: str | None
    """Why `importances` is empty; null otherwise."""

    @classmethod
    def of(cls, found: Importances) -> ImportancePublic:
        return cls(metric=found.objective.metric, goal=found.objective.goal, evaluator=found.evaluator,
                   completed=found.completed, judged=found.judged, reason=found.reason,
                   importances=[HParamImportance(hparam=name, importance=value)
                                for name, value in found.importances.items()])


class WorkerPublic(BaseModel):
    id: str
    host: str | None
    """null until a claim of the worker's is recorded (heartbeats and reports carry no host)."""
    gpu: str | None
    """The GPU the worker is pinned to, or its group of GPUs ("0,1"); null for a CPU worker."""
    gpus: int | None = None
    """How many GPUs (a CPU worker: devices) it gives one trial, as its latest claim said; null until it claims."""
    state: WorkerState
    """idle or busy, or lost when it has made no call for longer than the lease."""
    trial_id: int | None
    """The running trial it holds."""
    sweep_id: int | None = None
    """That trial's sweep; null when it holds none."""
    trial_number: int | None = None
    """That trial's number within its sweep, from 1 (what the page and the CLI show); null when it holds none."""
    first_seen_at: datetime
    last_heartbeat_at: datetime
    """Its latest call: a claim, a heartbeat, or a report on its trial."""

    @classmethod
    def from_status(cls, status: WorkerStatus) -> WorkerPublic:
        worker = status.worker
        return cls(id=worker.id, host=worker.host, gpu=worker.gpu, gpus=worker.gpus, state=status.state, trial_id=status.trial_id,
                   sweep_id=status.sweep_id, trial_number=status.trial_number, first_seen_at=worker.first_seen_at, last_heartbeat_at=worker.last_seen_at)


class WorkersPublic(BaseModel):
    data: list[WorkerPublic]
    count: int
    """How many workers were ever seen, not on this page."""


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ErrorMessage(BaseModel):
    """Every error but a validation error: one sentence naming what is wrong."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "sweep 7 not found"}]})

    detail: str


class ValidationProblem(BaseModel):
    """One problem, FastAPI's shape: where (`loc`, rooted at body, query or path), the rule broken, its kind."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorMessage(BaseModel):
    """422: every problem with the request, each with its field path."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": [
        {"loc": ["body", "hparams", "dropout"], "msg": "min (0.5) must be < max (0.1)", "type": "value_error"}]}]})

    detail: list[ValidationProblem]


ERRORS: dict[int, tuple[type[BaseModel], str]] = {
    400: (ErrorMessage, "The Host header names none of this server's names (its guard against DNS rebinding)."),
    401: (ErrorMessage, "No valid token (only when the server is configured with tokens)."),
    403: (ErrorMessage, "A worker token on an endpoint that needs the admin token, or a request that changes "
                        "something sent by a page of another origin."),
    404: (ErrorMessage, "No such sweep or trial; the message names the id."),
    409: (ErrorMessage, "The current state does not allow this; the message names it, and nothing changed."),
    413: (ErrorMessage, "The request body is larger than the server accepts; the message names the limit."),
    415: (ErrorMessage, "A body in a media type this endpoint does not read."),
    422: (ValidationErrorMessage, "The request broke a rule: each problem with its field path."),
    503: (ErrorMessage, "The database stayed busy; nothing changed, retry after the Retry-After seconds."),
}


def error_responses(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error codes, each with its schema; `e404="No sweep with this id."`
    words one for a route."""
    return {code: {"model": ERRORS[code][0], "description": descriptions.get(f"e{code}", ERRORS[code][1])}
            for code in codes}


COMMON_ERRORS = error_responses(422, 503)
"""What any route with parameters may answer: a bad parameter, a busy database. 401 and 403 are added
where auth applies, by api.openapi."""

"""Trials: the worker protocol (claim, heartbeat, metrics, complete, fail, release) and reading one trial.

Every call on a trial names the worker and carries the lease token of its claim; one that does not hold
the trial's current lease gets 409 and changes nothing. A complete, fail or release sent again with the
same token (a retry after a lost answer) gets 200 and the trial as stored.
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from pydantic import BaseModel

from sweeper import log_location
from sweeper.messages import (Assignment, ClaimRequest, CompleteReport, Directive, FailReport, HeartbeatRequest,
                              MetricsReport, ReleaseReport)

from api.auth import AdminDep, WorkerDep
from api.deps import AppContext, ContextDep, RepositoryDep
from api.dispatch import ClaimDesk, DeskDep
from api.metrics import MetricsDep, ServerMetrics
from api.repository import Claimed
from api.json_guard import StrictJSONRoute
from api.schemas import TrialDetail, TrialPublic

router = APIRouter(prefix="/trials", tags=["trials"], route_class=StrictJSONRoute)

_LEASE_RESPONSES: dict[int | str, dict[str, str]] = {
    404: {"description": "No trial with this id."},
    409: {"description": "This call's lease token is not the trial's current one (a newer claim took the trial, "
                         "or its lease ended); nothing was changed."},
}


@router.post("/claim", response_model=Assignment, dependencies=[WorkerDep],
             responses={204: {"description": "No work right now; ask again later."}})
async def claim(request: ClaimRequest, desk: DeskDep, context: ContextDep, metrics: MetricsDep) -> Response:
    """Hand the worker a trial: the one it already holds, a pending one, or the next one of a sweep."""
    return await claim_answer(request, desk, context, metrics)


async def claim_answer(request: ClaimRequest, desk: ClaimDesk, context: AppContext, metrics: ServerMetrics) -> Response:
    """The claim route's answer; api.worker_lane gives it too, without the router."""
    with metrics.timing_claim() as record:
        claimed = await desk.run(lambda repository: repository.claim(request))
        record(claimed is not None)
    if claimed is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return _json(_assignment(claimed, context))


@router.get("/{trial_id}", response_model=TrialDetail, responses={404: _LEASE_RESPONSES[404]}, dependencies=[AdminDep])
def get_trial(trial_id: int, repository: RepositoryDep) -> TrialDetail:
    """One trial with its per-epoch metric history."""
    return TrialDetail.from_history(repository.get_trial(trial_id))


@router.post("/{trial_id}/heartbeat", response_model=Directive, responses=_LEASE_RESPONSES, dependencies=[WorkerDep])
def heartbeat(trial_id: int, request: HeartbeatRequest, repository: RepositoryDep) -> Directive:
    """Extend the lease; the answer says whether to go on ("continue") or stop now ("cancel")."""
    return repository.heartbeat(trial_id, request)


@router.post("/{trial_id}/metrics", response_model=Directive, responses=_LEASE_RESPONSES, dependencies=[WorkerDep])
def report_metrics(trial_id: int, report: MetricsReport, repository: RepositoryDep) -> Directive:
    """One epoch's metrics (re-reporting an epoch replaces it); extends the lease, and answers like a heartbeat."""
    return repository.report_metrics(trial_id, report)


@router.post("/{trial_id}/complete", response_model=TrialPublic, responses=_LEASE_RESPONSES, dependencies=[WorkerDep])
async def complete(trial_id: int, report: CompleteReport, desk: DeskDep) -> Response:
    """The trial finished: record its final metrics (it ends cancelled if its sweep was cancelled or failed)."""
    return await complete_answer(trial_id, report, desk)


async def complete_answer(trial_id: int, report: CompleteReport, desk: ClaimDesk) -> Response:
    """The complete route's answer; api.worker_lane gives it too, without the router."""
    return _json(TrialPublic.model_validate(await desk.run(lambda repository: repository.complete(trial_id, report))))


@router.post("/{trial_id}/fail", response_model=TrialPublic, responses=_LEASE_RESPONSES, dependencies=[WorkerDep])
def fail(trial_id: int, report: FailReport, repository: RepositoryDep) -> TrialPublic:
    """The trial failed: a retryable failure or a crash with attempts left goes back to the queue."""
    return TrialPublic.model_validate(repository.fail(trial_id, report))


@router.post("/{trial_id}/release", response_model=TrialPublic, responses=_LEASE_RESPONSES, dependencies=[WorkerDep])
def release(trial_id: int, report: ReleaseReport, repository: RepositoryDep) -> TrialPublic:
    """The worker gives the trial back unfinished: pending again, its attempt not counted, its history kept."""
    return TrialPublic.model_validate(repository.release(trial_id, report))


def _json(answer: BaseModel) -> Response:
    # Serialised here, once: returned as a model, FastAPI would validate it against the response model
    # again and encode it through jsonable_encoder, which costs more than the claim's SQL.
    return Response(answer.model_dump_json(), media_type="application/json")


def _assignment(claimed: Claimed, context: ContextDep) -> Assignment:
    trial, spec = claimed.trial, claimed.plan.stored_spec
    assert trial.lease_expires_at is not None, "a claimed trial is running, so it has a lease"
    folder = log_location.trial_dir(context.logdir, trial.sweep_id, trial.id)
    return Assignment(
        trial_id=trial.id, sweep_id=trial.sweep_id, hparams=trial.hparams,
        model=spec["model"], dataset=spec["dataset"],
        objective=claimed.plan.spec.objective, train=claimed.plan.spec.train,
        logdir=folder,
        log_scaled=[name for name in claimed.plan.spec.log_scaled() if name in trial.hparams],
        attempt=trial.attempts,
        # Beside the trial's logs, so a retry on any worker sharing the logdir resumes from it.
        checkpoint_dir=log_location.checkpoint_dir(folder),
        heartbeat_seconds=context.policy.heartbeat.total_seconds(),
        lease_expires_at=trial.lease_expires_at,
        lease_token=trial.lease_token,
    )

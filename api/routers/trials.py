"""Trials: the worker protocol (claim, heartbeat, metrics, complete, fail, release) and reading one trial.

Every call on a trial names the worker and carries the lease token of its claim; one that does not hold
the trial's current lease gets 409 and changes nothing. A complete, fail or release sent again with the
same token (a retry after a lost answer) gets 200 and the trial as stored.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from sweeper.messages import (Assignment, ClaimRequest, CompleteReport, Directive, FailReport, HeartbeatRequest,
                              MetricsReport, ReleaseReport)

from api.auth import AdminDep, WorkerDep
from api.claims.answers import claim_answer, complete_answer
from api.claims.desk import DeskDep
from api.deps import ContextDep, RepositoryDep
from api.json_guard import StrictJSONRoute
from api.metrics import MetricsDep
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


@router.get("/{trial_id:int}", response_model=TrialDetail, responses={404: _LEASE_RESPONSES[404]}, dependencies=[AdminDep])
def get_trial(trial_id: int, repository: RepositoryDep) -> TrialDetail:
    """One trial with its per-epoch metric history."""
    return TrialDetail.from_history(repository.get_trial(trial_id))


# exclude_none: an answer without an exploit reads {"action": "continue"}, as it did before PBT.
@router.post("/{trial_id}/heartbeat", response_model=Directive, response_model_exclude_none=True,
             responses=_LEASE_RESPONSES, dependencies=[WorkerDep])
def heartbeat(trial_id: int, request: HeartbeatRequest, repository: RepositoryDep) -> Directive:
    """Extend the lease; the answer says whether to go on ("continue") or stop now ("cancel")."""
    return repository.heartbeat(trial_id, request)


@router.post("/{trial_id}/metrics", response_model=Directive, response_model_exclude_none=True,
             responses=_LEASE_RESPONSES, dependencies=[WorkerDep])
def report_metrics(trial_id: int, report: MetricsReport, repository: RepositoryDep) -> Directive:
    """One epoch's metrics (re-reporting an epoch replaces it); extends the lease, and answers like a heartbeat."""
    return repository.report_metrics(trial_id, report)


@router.post("/{trial_id}/complete", response_model=TrialPublic, responses=_LEASE_RESPONSES, dependencies=[WorkerDep])
async def complete(trial_id: int, report: CompleteReport, desk: DeskDep) -> Response:
    """The trial finished: record its final metrics (it ends cancelled if its sweep was cancelled or failed)."""
    return await complete_answer(trial_id, report, desk)


@router.post("/{trial_id}/fail", response_model=TrialPublic, responses=_LEASE_RESPONSES, dependencies=[WorkerDep])
def fail(trial_id: int, report: FailReport, repository: RepositoryDep) -> TrialPublic:
    """The trial failed: a retryable failure or a crash with attempts left goes back to the queue."""
    return TrialPublic.model_validate(repository.fail(trial_id, report))


@router.post("/{trial_id}/release", response_model=TrialPublic, responses=_LEASE_RESPONSES, dependencies=[WorkerDep])
def release(trial_id: int, report: ReleaseReport, repository: RepositoryDep) -> TrialPublic:
    """The worker gives the trial back unfinished: pending again, its attempt not counted, its history kept."""
    return TrialPublic.model_validate(repository.release(trial_id, report))

"""The answers to a claim and a completion, built once for both ways in: the router and the worker lane.

Serialised here, once: returned as a model, FastAPI would validate it against the response model again
and encode it through jsonable_encoder, which costs more than the claim's SQL.
"""

from __future__ import annotations

from fastapi import Response, status
from pydantic import BaseModel

from sweeper import log_location
from sweeper.messages import Assignment, ClaimRequest, CompleteReport

from api.claims.desk import ClaimDesk
from api.deps import AppContext
from api.metrics import ServerMetrics
from api.schemas import TrialPublic
from api.storage import Claimed, pbt_member


async def claim_answer(request: ClaimRequest, desk: ClaimDesk, context: AppContext, metrics: ServerMetrics) -> Response:
    """The claim's answer: 200 with the assignment, or 204 when there is no work."""
    with metrics.timing_claim() as record:
        claimed = await desk.run(lambda repository: repository.claim(request))
        record(claimed is not None)
    if claimed is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return json_answer(assignment(claimed, context))


async def complete_answer(trial_id: int, report: CompleteReport, desk: ClaimDesk) -> Response:
    """The completion's answer: the trial as stored."""
    return json_answer(TrialPublic.model_validate(await desk.run(lambda repository: repository.complete(trial_id,
                                                                                                         report))))


def json_answer(answer: BaseModel) -> Response:
    return Response(answer.model_dump_json(), media_type="application/json")


def assignment(claimed: Claimed, context: AppContext) -> Assignment:
    """What the worker needs to run the trial it claimed, with the token of this claim."""
    trial, spec = claimed.trial, claimed.plan.stored_spec
    assert trial.lease_expires_at is not None, "a claimed trial is running, so it has a lease"
    folder = log_location.trial_dir(context.logdir, trial.sweep_id, claimed.plan.run_name(trial.id, trial.number))
    return Assignment(
        trial_id=trial.id, sweep_id=trial.sweep_id, number=trial.number, hparams=trial.hparams,
        model=spec["model"], dataset=spec["dataset"],
        objective=claimed.plan.spec.objective, train=claimed.plan.spec.train,
        logdir=folder,
        log_scaled=[name for name in claimed.plan.spec.log_scaled() if name in trial.hparams],
        pbt=pbt_member(claimed.plan, context.logdir, trial.id, trial.number, trial.sweep_id, trial.search_state),
        attempt=trial.attempts,
        # Beside the trial's logs, so a retry on any worker sharing the logdir resumes from it.
        checkpoint_dir=log_location.checkpoint_dir(folder),
        heartbeat_seconds=context.policy.heartbeat.total_seconds(),
        lease_expires_at=trial.lease_expires_at,
        lease_token=trial.lease_token,
    )

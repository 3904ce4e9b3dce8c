"""Sweeps: create one from a spec (JSON or YAML), list them, read one with its trials, its best trial and its
objective curve; pause, resume, extend or cancel one.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PositiveInt

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request, status

from sweeper import SpecError, SweepSpec, make_strategy, parse_spec, yaml_lines
from sweeper.hparams_log import write_experiment
from sweeper.log_location import sweep_dir
from sweeper.messages import SweepStatus, TrialState

from api.deps import ContextDep, RepositoryDep
from api.search.samplers import require_sampler, sampler_problems
from api.json_guard import StrictJSONRoute
from api.schemas import (COMMON_ERRORS, ObjectivePublic, SweepPlanPublic, SweepPublic, SweepsPublic, TrialDetail,
                         TrialPublic, TrialsPublic, error_responses)
from api.spec_body import is_yaml, spec_document
from api.queries import SORT_PATTERN, SortOrder

router = APIRouter(prefix="/sweeps", tags=["sweeps"], route_class=StrictJSONRoute, responses=COMMON_ERRORS)

_EXAMPLE_SPEC = {
    "name": "digits-mlp",
    "model": "mlp",
    "dataset": "digits",
    "objective": {"metric": "val_accuracy", "goal": "maximize"},
    "hparams": {
        "units": {"type": "discrete", "values": [16, 32, 64]},
        "dropout": {"type": "real_interval", "min": 0.1, "max": 0.5},
        "learning_rate": {"type": "real_interval", "min": 1e-4, "max": 1e-1, "log": True},
        "batch_size": 64,
    },
    "search": {"strategy": "random", "max_trials": 20, "seed": 0},
    "train": {"epochs": 10, "validation_split": 0.2},
}

# Taken as any JSON and validated by the core's parse_spec, so every problem comes back with the
# core's field path and rule, exactly as `sweeper submit` reports it for a file.
SpecBody = Annotated[Any, Body(description="A sweep spec, the same as a spec file: JSON, or YAML sent as "
                                           "application/yaml (or text/yaml).",
                               openapi_examples={"digits-mlp": {"summary": "An MLP on scikit-learn's digits",
                                                                "value": _EXAMPLE_SPEC}})]
# FastAPI documents the JSON body; the same document may come as YAML, like a spec file.
_YAML_BODY: dict[str, Any] = {"requestBody": {"content": {"application/yaml": {
    "schema": {"description": "The same spec as YAML, parsed like a spec file."},
    "examples": {"digits-mlp": {"summary": "An MLP on scikit-learn's digits", "value": _EXAMPLE_SPEC}}}}}}
_SPEC_ERRORS = error_responses(413, 415, 422, e422="The spec broke a rule (each problem with its field path), or "
                                                    "the YAML has a syntax error (the message names the line).")
_NOT_FOUND = error_responses(404, e404="No sweep with this id.")

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=2**62, description="Items to skip.")]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SweepPublic, summary="Create a sweep",
             openapi_extra=_YAML_BODY, responses=_SPEC_ERRORS)
def create_sweep(body: SpecBody, request: Request, repository: RepositoryDep, context: ContextDep) -> SweepPublic:
    """Create a sweep from a spec, JSON or YAML; trials are generated as workers claim them. A spec with a
    mistake creates nothing and answers 422 with every problem and its field path."""
    spec = _checked_spec(body, request)
    # Written before the sweep is committed: a sweep that exists always has its TensorBoard config.
    summary = repository.create_sweep(
        spec, max_trials=context.settings.max_sweep_trials,
        on_created=lambda sweep_id: write_experiment(sweep_dir(context.logdir, sweep_id), spec))
    return SweepPublic.from_summary(summary)


@router.post("/validate", response_model=SweepPlanPublic, summary="Check a spec", openapi_extra=_YAML_BODY,
             responses=_SPEC_ERRORS)
def validate_sweep(body: SpecBody, request: Request) -> SweepPlanPublic:
    """Check a spec (JSON or YAML) without creating anything: its problems (422), or how large its search is
    and the spec with its defaults filled in."""
    spec = _checked_spec(body, request)
    strategy = make_strategy(spec)
    return SweepPlanPublic(space_size=strategy.size, total_trials=strategy.total, spec=spec.to_json())


def _checked_spec(body: Any, request: Request) -> SweepSpec:
    """The posted spec, valid and runnable here; or SpecError with its problems and this server's, together."""
    content_type = request.headers.get("content-type")
    document = spec_document(body, content_type)
    try:
        spec = parse_spec(document)
    except SpecError as error:
        search = document.get("search") if isinstance(document, dict) else None
        strategy = search.get("strategy") if isinstance(search, dict) else None
        raise _located(SpecError([*error.problems, *sampler_problems(strategy)]), body, content_type) from None
    try:
        require_sampler(spec)
    except SpecError as error:
        raise _located(error, body, content_type) from None
    return spec


def _located(error: SpecError, body: Any, content_type: str | None) -> SpecError:
    """`error` with the line of a YAML body on which each problem's field was written, as `sweeper check`
    names them for a file; a JSON body has no lines worth naming."""
    if not is_yaml(content_type):
        return error
    return SpecError(error.problems, None, yaml_lines(bytes(body).decode("utf-8"), [path for path, _ in error.problems]))


@router.get("", response_model=SweepsPublic, summary="List sweeps")
def list_sweeps(repository: RepositoryDep, limit: Limit = 100, offset: Offset = 0,
                state: Annotated[SweepStatus | None, Query(description="Only sweeps in this status.")] = None,
                ) -> SweepsPublic:
    """Sweeps, newest first, each with its trial counts and best trial; `count` is the total (of that status)."""
    summaries, count = repository.list_sweeps(limit=limit, offset=offset, status=state)
    return SweepsPublic(data=[SweepPublic.from_summary(summary) for summary in summaries], count=count)


@router.get("/{sweep_id:int}", response_model=SweepPublic, summary="Read a sweep", responses=_NOT_FOUND)
def get_sweep(sweep_id: int, repository: RepositoryDep) -> SweepPublic:
    """One sweep, with its trials counted by state and its best trial so far."""
    return SweepPublic.from_summary(repository.get_sweep(sweep_id))


@router.get("/{sweep_id}/trials", response_model=TrialsPublic, summary="List a sweep's trials",
            responses=_NOT_FOUND)
def list_trials(sweep_id: int, repository: RepositoryDep,
                limit: Annotated[int, Query(ge=1, le=100_000, description="Page size.")] = 10_000,
                offset: Offset = 0,
                state: Annotated[TrialState | None, Query(description="Only trials in this state.")] = None,
                sort: Annotated[str, Query(
                    max_length=200, pattern=SORT_PATTERN,
                    description="`index` (search order), `objective` (the sweep's objective metric), "
                                "`metrics.<name>` (a final metric) or `hparams.<name>`. Trials without the "
                                "value come last.")] = "index",
                order: Annotated[SortOrder | None, Query(
                    description="`asc` or `desc`; by default `asc`, except that `objective` puts the best "
                                "first per the sweep's goal.")] = None,
                ) -> TrialsPublic:
    """The sweep's trials so far, sorted and filtered; `count` is the total (of that state). An hparam the
    sweep does not have is a 422 naming its hparams."""
    trials, count = repository.list_trials(sweep_id, limit=limit, offset=offset, state=state, sort=sort,
                                           order=order)
    return TrialsPublic(data=[TrialPublic.model_validate(trial) for trial in trials], count=count)


@router.get("/{sweep_id}/trials/{number}", response_model=TrialDetail, summary="Read a trial by its number",
            responses=error_responses(404, e404="No sweep with this id, or the sweep has no trial with this number "
                                                "(yet); the message names both."))
def get_trial_by_number(sweep_id: int, repository: RepositoryDep,
                        number: Annotated[int, Path(ge=1, le=2**62, description="The trial's number within the "
                                                                                 "sweep, from 1.")]) -> TrialDetail:
    """The sweep's trial with this number (as the page, the CLI and TensorBoard name it), with its per-epoch
    metric history: the same answer as `GET /trials/{id}`."""
    return TrialDetail.from_history(repository.get_trial_by_number(sweep_id, number))


@router.get("/{sweep_id}/best", response_model=TrialPublic, summary="Read a sweep's best trial",
            responses=error_responses(404, e404="No sweep with this id, or none of its trials has completed "
                                                "with a value for the objective yet."))
def best_trial(sweep_id: int, repository: RepositoryDep) -> TrialPublic:
    """The completed trial with the best objective per the spec's goal (the earliest wins a tie)."""
    trial = repository.best_trial(sweep_id)
    if trial is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"sweep {sweep_id} has no completed trial with a value for its objective yet")
    return TrialPublic.model_validate(trial)


@router.get("/{sweep_id}/objective", response_model=ObjectivePublic, summary="Read a sweep's objective curve",
            responses=_NOT_FOUND)
def objective(sweep_id: int, repository: RepositoryDep) -> ObjectivePublic:
    """The objective metric and goal, and each completed trial's value in index order (null where it reported
    no finite value): compact enough for a chart of 10,000 trials."""
    return ObjectivePublic.from_series(repository.objective(sweep_id))


_CONTROL_RESPONSES = error_responses(404, 409, e404="No sweep with this id.",
                                     e409="The sweep's current status does not allow this; the message names it.")


@router.post("/{sweep_id}/pause", response_model=SweepPublic, summary="Pause a sweep", responses=_CONTROL_RESPONSES)
def pause_sweep(sweep_id: int, repository: RepositoryDep) -> SweepPublic:
    """Stop handing out the sweep's trials; the running ones finish normally. Only a running sweep."""
    return SweepPublic.from_summary(repository.pause_sweep(sweep_id))


@router.post("/{sweep_id}/resume", response_model=SweepPublic, summary="Resume a sweep",
             responses=_CONTROL_RESPONSES)
def resume_sweep(sweep_id: int, repository: RepositoryDep) -> SweepPublic:
    """Hand out the sweep's trials again. Only a paused sweep."""
    return SweepPublic.from_summary(repository.resume_sweep(sweep_id))


class ExtendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"max_trials": 120}]})

    max_trials: PositiveInt
    """The sweep's new number of trials, more than it has."""


@router.post("/{sweep_id}/extend", response_model=SweepPublic, summary="Extend a sweep",
             responses=error_responses(404, 409, 422, e404="No sweep with this id.",
                                       e409="The sweep is cancelled.",
                                       e422="max_trials adds no trial, or more than this server allows."))
def extend_sweep(sweep_id: int, body: ExtendRequest, repository: RepositoryDep, context: ContextDep) -> SweepPublic:
    """Give the sweep more trials: a completed or failed sweep runs again (a failed one with a fresh failure
    budget), a running or paused one keeps its status, and an adaptive search goes on from all its results so
    far. Not a cancelled sweep (409)."""
    return SweepPublic.from_summary(repository.extend_sweep(sweep_id, body.max_trials,
                                                            server_limit=context.settings.max_sweep_trials))


@router.post("/{sweep_id}/cancel", response_model=SweepPublic, summary="Cancel a sweep",
             responses=_CONTROL_RESPONSES)
def cancel_sweep(sweep_id: int, repository: RepositoryDep) -> SweepPublic:
    """End the sweep: pending trials are cancelled, running ones are told to cancel at their next heartbeat
    or metrics report and end cancelled. Only a running or paused sweep."""
    return SweepPublic.from_summary(repository.cancel_sweep(sweep_id))

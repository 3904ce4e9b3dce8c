"""Sweeps: create one from a spec, list them, read one with its trials; pause, resume or cancel one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, status

from sweeper import make_strategy, parse_spec
from sweeper.hparams_log import write_experiment

from api.deps import ContextDep, RepositoryDep
from api.json_guard import StrictJSONRoute
from api.schemas import SweepPlanPublic, SweepPublic, SweepsPublic, TrialPublic, TrialsPublic

router = APIRouter(prefix="/sweeps", tags=["sweeps"], route_class=StrictJSONRoute)

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
SpecBody = Annotated[Any, Body(description="A sweep spec, the same as a spec file in JSON.",
                               openapi_examples={"digits-mlp": {"value": _EXAMPLE_SPEC}})]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=2**62, description="Items to skip.")]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SweepPublic)
def create_sweep(body: SpecBody, repository: RepositoryDep, context: ContextDep) -> SweepPublic:
    """Create a sweep from a spec; trials are generated as workers claim them."""
    spec = parse_spec(body)
    # Written before the sweep is committed: a sweep that exists always has its TensorBoard config.
    summary = repository.create_sweep(
        spec, max_trials=context.settings.max_sweep_trials,
        on_created=lambda sweep_id: write_experiment(context.logdir / str(sweep_id), spec))
    return SweepPublic.from_summary(summary)


@router.post("/validate", response_model=SweepPlanPublic)
def validate_sweep(body: SpecBody) -> SweepPlanPublic:
    """Check a spec without creating anything: its problems (422), or how large its search is."""
    spec = parse_spec(body)
    strategy = make_strategy(spec)
    return SweepPlanPublic(space_size=strategy.size, total_trials=strategy.total, spec=spec.to_json())


@router.get("", response_model=SweepsPublic)
def list_sweeps(repository: RepositoryDep, limit: Limit = 100, offset: Offset = 0) -> SweepsPublic:
    """Sweeps, newest first; `count` is the total."""
    summaries, count = repository.list_sweeps(limit=limit, offset=offset)
    return SweepsPublic(data=[SweepPublic.from_summary(summary) for summary in summaries], count=count)


@router.get("/{sweep_id}", response_model=SweepPublic)
def get_sweep(sweep_id: int, repository: RepositoryDep) -> SweepPublic:
    """One sweep, with its trials counted by state and its best trial so far."""
    return SweepPublic.from_summary(repository.get_sweep(sweep_id))


@router.get("/{sweep_id}/trials", response_model=TrialsPublic)
def list_trials(sweep_id: int, repository: RepositoryDep,
                limit: Annotated[int, Query(ge=1, le=100_000, description="Page size.")] = 10_000,
                offset: Offset = 0) -> TrialsPublic:
    """The sweep's trials so far, in search order; `count` is the total."""
    trials, count = repository.list_trials(sweep_id, limit=limit, offset=offset)
    return TrialsPublic(data=[TrialPublic.model_validate(trial) for trial in trials], count=count)


_CONTROL_RESPONSES: dict[int | str, dict[str, str]] = {
    404: {"description": "No sweep with this id."},
    409: {"description": "The sweep's current status does not allow this; the message names it."},
}


@router.post("/{sweep_id}/pause", response_model=SweepPublic, responses=_CONTROL_RESPONSES)
def pause_sweep(sweep_id: int, repository: RepositoryDep) -> SweepPublic:
    """Stop handing out the sweep's trials; the running ones finish normally. Only a running sweep."""
    return SweepPublic.from_summary(repository.pause_sweep(sweep_id))


@router.post("/{sweep_id}/resume", response_model=SweepPublic, responses=_CONTROL_RESPONSES)
def resume_sweep(sweep_id: int, repository: RepositoryDep) -> SweepPublic:
    """Hand out the sweep's trials again. Only a paused sweep."""
    return SweepPublic.from_summary(repository.resume_sweep(sweep_id))


@router.post("/{sweep_id}/cancel", response_model=SweepPublic, responses=_CONTROL_RESPONSES)
def cancel_sweep(sweep_id: int, repository: RepositoryDep) -> SweepPublic:
    """End the sweep: pending trials are cancelled, running ones are told to cancel at their next heartbeat
    or metrics report and end cancelled. Only a running or paused sweep."""
    return SweepPublic.from_summary(repository.cancel_sweep(sweep_id))

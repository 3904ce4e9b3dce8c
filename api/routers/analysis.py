"""A sweep's analysis: which hparams matter (parameter importance), and its trials exported as CSV or JSON."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from sweeper.messages import TrialState

from api.deps import ContextDep, RepositoryDep
from api.exports import to_csv, to_json, trial_records
from api.json_guard import StrictJSONRoute
from api.schemas import COMMON_ERRORS, ImportancePublic, error_responses
from api.search.importance import ImportanceEvaluator, Importances, param_importances

router = APIRouter(prefix="/sweeps", tags=["analysis"], route_class=StrictJSONRoute, responses=COMMON_ERRORS)

_NOT_FOUND = error_responses(404, e404="No sweep with this id.")
_CSV_EXAMPLE = ("id,number,index,state,hparams.units,hparams.learning_rate,metrics.val_accuracy,metrics.loss,attempts,"
                "worker_id,created_at,started_at,finished_at,duration_s,pruned_at_epoch,failure_kind,error\n"
                "7,1,0,completed,64,0.003,0.97,0.08,1,gpu-box/0,2026-05-01T10:00:00+00:00,"
                "2026-05-01T10:00:01+00:00,2026-05-01T10:02:11+00:00,130.0,,,\n")
_JSON_SCHEMA = {"type": "object", "required": ["sweep_id", "spec", "columns", "trials"], "properties": {
    "sweep_id": {"type": "integer"}, "spec": {"type": "object", "description": "The normalised spec."},
    "columns": {"type": "array", "items": {"type": "string"}},
    "trials": {"type": "array", "items": {"type": "object", "description": "One trial: a value per column."}}}}
StateFilter = Annotated[TrialState | None, Query(description="Only trials in this state.")]


# A plain `def`: FastAPI runs it in its thread pool, so a forest over thousands of trials never holds up the
# event loop. The trials are read in one short transaction; the evaluation runs after it.
@router.get("/{sweep_id:int}/importance", response_model=ImportancePublic, summary="Read parameter importance",
            responses=_NOT_FOUND)
def importance(sweep_id: int, repository: RepositoryDep, context: ContextDep,
               evaluator: Annotated[ImportanceEvaluator, Query(
                   description="`fanova` (the default: the objective's variance each hparam explains, by a "
                               "random forest), `ped_anova` (how the top trials' values differ from the rest's) "
                               "or `mean_decrease_impurity`.")] = ImportanceEvaluator.fanova,
               ) -> ImportancePublic:
    """Each searched hparam's importance for the sweep's objective (the first, for a multi-objective sweep),
    largest first, over its completed trials (fANOVA: a seeded sample of at most 200 of them); seeded, so the
    same trials give the same answer. With fewer than 4 completed trials, or no hparam searched,
    `importances` is empty and `reason` says why."""
    def compute() -> Importances:
        study = repository.sweep_study(sweep_id)
        return param_importances(study.trials, study.spec.all_objectives[0], study.directions, evaluator)

    completed = repository.completed_count(sweep_id)
    return ImportancePublic.of(context.importances.get(sweep_id, evaluator, completed, compute))


def _attachment(body: str, media_type: str, filename: str) -> Response:
    return Response(body, media_type=media_type, headers={
        "Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"})


@router.get("/{sweep_id:int}/trials.csv", summary="Export a sweep's trials as CSV",
            response_class=Response, responses={**_NOT_FOUND, 200: {
                "content": {"text/csv": {"schema": {"type": "string", "example": _CSV_EXAMPLE}}}, "description": "One row per trial, in search order."}})
def export_csv(sweep_id: int, repository: RepositoryDep, state: StateFilter = None) -> Response:
    """Every trial (of one state, if given) in search order: id, number, index, state, `hparams.<name>` for each
    hparam, `metrics.<name>` for each final metric (objectives first), attempts, worker, times, failure."""
    spec, trials = repository.all_trials(sweep_id, state)
    columns, records = trial_records(spec, trials)
    return _attachment(to_csv(columns, records), "text/csv; charset=utf-8", f"sweep-{sweep_id}-trials.csv")


@router.get("/{sweep_id:int}/trials.json", summary="Export a sweep's trials as JSON",
            response_class=Response, responses={**_NOT_FOUND, 200: {
                "content": {"application/json": {"schema": _JSON_SCHEMA}},
                "description": '`{"sweep_id", "spec", "columns", "trials": [{column: value}]}`.'}})
def export_json(sweep_id: int, repository: RepositoryDep, state: StateFilter = None) -> Response:
    """The same rows as the CSV export, as JSON records under `trials`, with the sweep's spec and the columns."""
    spec, trials = repository.all_trials(sweep_id, state)
    columns, records = trial_records(spec, trials)
    return _attachment(to_json(sweep_id, spec, columns, records), "application/json",
                       f"sweep-{sweep_id}-trials.json")

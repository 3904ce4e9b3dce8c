"""A sweep's trials as files to download: CSV for a spreadsheet or pandas, JSON for scripts.

One row per trial, in search order. Columns name their source as the trials' `sort` parameter does
(`hparams.learning_rate`, `metrics.val_loss`), so an hparam and a metric of the same name (the learning rate
is both) stay apart. A string cell that a spreadsheet would run as a formula (it starts with `=`, `+`, `-`,
`@`, a tab or a carriage return: an error message or a string hparam can) is written with a leading `'`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sweeper import SweepSpec

from api.models import TrialRow

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_TRIAL_COLUMNS = ("id", "number", "index", "state")
_TAIL_COLUMNS = ("attempts", "worker_id", "created_at", "started_at", "finished_at", "duration_s",
                 "pruned_at_epoch", "failure_kind", "error")


def metric_names(spec: SweepSpec, trials: Iterable[TrialRow]) -> list[str]:
    """The objectives first, in the spec's order, then every other final metric a trial reported, by name."""
    objectives = [objective.metric for objective in spec.all_objectives]
    others = sorted({name for trial in trials for name in trial.metrics} - set(objectives))
    return objectives + others


def trial_record(trial: TrialRow, hparams: Sequence[str], metrics: Sequence[str]) -> dict[str, Any]:
    """One trial as a flat record: the export's row."""
    duration = (trial.finished_at - trial.started_at).total_seconds() \
        if trial.finished_at is not None and trial.started_at is not None else None
    return {"id": trial.id, "number": trial.number, "index": trial.index, "state": str(trial.state),
            **{f"hparams.{name}": trial.hparams.get(name) for name in hparams},
            **{f"metrics.{name}": trial.metrics.get(name) for name in metrics},
            "attempts": trial.attempts, "worker_id": trial.worker_id, "created_at": _when(trial.created_at),
            "started_at": _when(trial.started_at), "finished_at": _when(trial.finished_at),
            "duration_s": None if duration is None else round(duration, 3),
            "pruned_at_epoch": trial.pruned_at_epoch,
            "failure_kind": None if trial.failure_kind is None else str(trial.failure_kind), "error": trial.error}


def trial_records(spec: SweepSpec, trials: Sequence[TrialRow]) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and the records of these trials."""
    hparams = list(spec.hparams)
    metrics = metric_names(spec, trials)
    columns = [*_TRIAL_COLUMNS, *(f"hparams.{name}" for name in hparams), *(f"metrics.{name}" for name in metrics),
               *_TAIL_COLUMNS]
    return columns, [trial_record(trial, hparams, metrics) for trial in trials]


def to_csv(columns: Sequence[str], records: Iterable[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([_cell(record[column]) for column in columns])
    return out.getvalue()


def to_json(sweep_id: int, spec: SweepSpec, columns: Sequence[str], records: Sequence[dict[str, Any]]) -> str:
    return json.dumps({"sweep_id": sweep_id, "spec": spec.to_json(), "columns": list(columns), "trials": records},
                      allow_nan=False, separators=(",", ":"))


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _when(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()

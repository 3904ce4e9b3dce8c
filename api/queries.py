"""Read queries over many sweeps, trials or workers at once: the few statements the list endpoints need.

Listing sweeps costs a fixed number of statements whatever the page size (none per sweep): one grouped
count, and one best-trial query per distinct objective on the page. Objective values, metrics and
hparams are read inside the database with SQLAlchemy's JSON operators, so sorting or picking the best
of 10,000 trials never loads them into Python.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from pydantic import TypeAdapter
from sqlalchemy import ColumnElement, Select, and_, case, exists, func, select
from sqlalchemy.orm import Session

from sweeper import Domain, Objective, SearchSettings, SweeperError, SweepSpec, make_strategy
from sweeper.messages import TrialState

from api.models import SweepRow, TrialRow, WorkerRow
from api.search.pareto import pareto_front

SortOrder = Literal["asc", "desc"]

SORT_PATTERN = r"^(index|objective|metrics\.[A-Za-z0-9_][A-Za-z0-9_.\-]*|hparams\.[A-Za-z_][A-Za-z0-9_.\-]*)$"
"""What `sort` accepts. Names are restricted to the characters hparam names may hold, which also keeps
them safe inside a JSON path."""


class QueryError(SweeperError):
    """A query parameter that is well formed but names something this sweep does not have."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class TrialStats:
    """A sweep's trials counted by state, and when the first of them started."""

    counts: dict[TrialState, int]
    started_at: datetime | None


class ObjectivePoint(NamedTuple):
    trial_id: int
    index: int
    value: float | None
    """The completed trial's objective; None when it never reported a finite one."""


def objective_of(sweep: SweepRow) -> Objective:
    # From the stored spec alone: a read must not depend on the registries still naming the sweep's model.
    return Objective.model_validate(sweep.spec["objective"])


def objective_value(objective: Objective) -> ColumnElement[Any]:
    """A completed trial's objective, as SQL: its final metric (the best epoch's, with `epoch: best`)."""
    return TrialRow.metrics[objective.metric].as_float()


def trial_stats(session: Session, sweep_ids: Iterable[int]) -> dict[int, TrialStats]:
    """Counts by state and the first start, for every sweep in `sweep_ids`, in one grouped statement."""
    ids = list(sweep_ids)
    counts: dict[int, dict[TrialState, int]] = {sweep_id: dict.fromkeys(TrialState, 0) for sweep_id in ids}
    started: dict[int, datetime | None] = dict.fromkeys(ids)
    if ids:
        rows = session.execute(
            select(TrialRow.sweep_id, TrialRow.state, func.count(), func.min(TrialRow.started_at))
            .where(TrialRow.sweep_id.in_(ids)).group_by(TrialRow.sweep_id, TrialRow.state))
        for sweep_id, state, count, first in rows:
            counts[sweep_id][TrialState(state)] = count
            if first is not None and (started[sweep_id] is None or first < started[sweep_id]):
                started[sweep_id] = first
    return {sweep_id: TrialStats(counts[sweep_id], started[sweep_id]) for sweep_id in ids}


class FirstFailure(NamedTuple):
    """A sweep's first trial to fail for good: its number in the sweep and its error's first line."""

    number: int
    error: str

    def __str__(self) -> str:
        return f"trial {self.number}: {self.error}"


def first_failures(session: Session, sweep_ids: Iterable[int]) -> dict[int, FirstFailure]:
    """Each sweep's first trial to fail for good (the earliest to finish; the lower index wins a tie), by sweep
    id; sweeps without a failed trial are left out. One statement, ranking each sweep's failed trials."""
    ids = list(sweep_ids)
    if not ids:
        return {}
    order = (TrialRow.finished_at, TrialRow.index)
    rank = func.row_number().over(partition_by=TrialRow.sweep_id, order_by=order).label("rank")
    ranked = (select(TrialRow.sweep_id, TrialRow.index, TrialRow.error, rank)
              .where(TrialRow.sweep_id.in_(ids), TrialRow.state == TrialState.failed).subquery())
    rows = session.execute(select(ranked.c.sweep_id, ranked.c.index, ranked.c.error).where(ranked.c.rank == 1))
    return {sweep_id: FirstFailure(index + 1, first_line(error)) for sweep_id, index, error in rows}


def first_line(text: str | None, default: str = "no error given", limit: int = 200) -> str:
    """A message's first line, cut to `limit` characters: errors and tracebacks can run to pages."""
    lines = (text or "").strip().splitlines()
    line = lines[0] if lines else default
    return line if len(line) <= limit else line[: limit - 1] + "…"


def best_trials(session: Session, sweeps: Sequence[SweepRow]) -> dict[int, TrialRow]:
    """Each sweep's completed trial with the best finite objective (the earliest wins a tie), by sweep id.

    One statement per distinct objective among `sweeps` (ranking each sweep's completed trials in a
    window), not one per sweep.
    """
    by_objective: dict[Objective, list[int]] = defaultdict(list)
    for sweep in sweeps:
        # Grouped by metric and goal only: `epoch` decided which epoch's value the trial reported, not where.
        by_objective[objective_of(sweep).model_copy(update={"epoch": "last"})].append(sweep.id)
    best: dict[int, TrialRow] = {}
    for objective, ids in by_objective.items():
        value = objective_value(objective)
        candidates = (TrialRow.sweep_id.in_(ids), TrialRow.state == TrialState.completed, value.is_not(None))
        order = (_best_first(value, objective), TrialRow.id)
        if len(ids) == 1:
            # One sweep (reading a sweep, or its best trial): a top-1 scan, cheaper than ranking them all.
            query = select(TrialRow).where(*candidates).order_by(*order).limit(1)
        else:
            rank = func.row_number().over(partition_by=TrialRow.sweep_id, order_by=order).label("rank")
            ranked = select(TrialRow.id, rank).where(*candidates).subquery()
            query = select(TrialRow).join(ranked, TrialRow.id == ranked.c.id).where(ranked.c.rank == 1)
        for trial in session.scalars(query):
            best[trial.sweep_id] = trial
    return best


def is_multi_objective(sweep: SweepRow) -> bool:
    return bool(sweep.spec.get("objectives"))


def pareto_fronts(session: Session, sweeps: Sequence[SweepRow]) -> dict[int, list[tuple[int, int]]]:
    """Each multi-objective sweep's Pareto front: the (id, number) of its completed trials that no other
    completed trial beats in every objective, in id order. One statement per multi-objective sweep."""
    fronts: dict[int, list[tuple[int, int]]] = {}
    for sweep in sweeps:
        if is_multi_objective(sweep):
            trials, points, maximize = objective_table(session, sweep)
            fronts[sweep.id] = [trials[position] for position in pareto_front(points, maximize)]
    return fronts


def objective_table(session: Session, sweep: SweepRow) -> tuple[list[tuple[int, int]], list[list[float]], list[bool]]:
    """A multi-objective sweep's completed trials with a finite value of every objective: their (id, number),
    their values (one column per objective), and which objectives are maximized."""
    objectives = [Objective.model_validate(objective) for objective in sweep.spec["objectives"]]
    values = [objective_value(objective).label(f"value_{position}") for position, objective in enumerate(objectives)]
    rows = session.execute(select(TrialRow.id, TrialRow.index, *values)
                           .where(TrialRow.sweep_id == sweep.id, TrialRow.state == TrialState.completed,
                                  *(value.is_not(None) for value in values))
                           .order_by(TrialRow.id)).all()
    finite = [row for row in rows if all(math.isfinite(value) for value in row[2:])]
    return ([(row.id, row.index + 1) for row in finite], [list(row[2:]) for row in finite],
            [objective.goal == "maximize" for objective in objectives])


def objective_points(session: Session, sweep: SweepRow) -> list[ObjectivePoint]:
    """Every completed trial's objective, in index order: only three columns, for 10,000 trials too."""
    value = objective_value(objective_of(sweep))
    rows = session.execute(select(TrialRow.id, TrialRow.index, value)
                           .where(TrialRow.sweep_id == sweep.id, TrialRow.state == TrialState.completed)
                           .order_by(TrialRow.index))
    return [ObjectivePoint(*row) for row in rows]


def ordered_trials(query: Select[Any], sweep: SweepRow, sort: str, order: SortOrder | None) -> Select[Any]:
    """`query` over the sweep's trials, ordered by `sort` (see SORT_PATTERN); trials without the value last.

    `order` defaults to ascending, except for `objective`, which puts the best first per the goal.
    Ties keep search order.
    """
    if sort == "index":
        return query.order_by(TrialRow.index.desc() if order == "desc" else TrialRow.index)
    if sort == "objective":
        objective = objective_of(sweep)
        key = objective_value(objective)
        default: SortOrder = "desc" if objective.goal == "maximize" else "asc"
    elif sort.startswith("metrics."):
        key, default = TrialRow.metrics[sort.removeprefix("metrics.")].as_float(), "asc"
    elif sort.startswith("hparams."):
        key, default = _hparam_value(sweep, sort.removeprefix("hparams.")), "asc"
    else:
        raise QueryError("sort", f"sort must be index, objective, metrics.<name> or hparams.<name>, but got {sort!r}")
    descending = (order or default) == "desc"
    return query.order_by(key.is_(None), key.desc() if descending else key.asc(), TrialRow.index)


def worker_state_is(state: str, lost_before: datetime) -> ColumnElement[bool]:
    """SQL for "the worker is in `state` (idle, busy or lost)", as api.storage.WorkerState defines them:
    lost once silent since `lost_before`, else busy while it holds a running trial, else idle."""
    if state == "lost":
        return WorkerRow.last_seen_at < lost_before
    holds_trial = exists().where(TrialRow.worker_id == WorkerRow.id, TrialRow.state == TrialState.running)
    return and_(WorkerRow.last_seen_at >= lost_before, holds_trial if state == "busy" else ~holds_trial)


def worker_state_expression(lost_before: datetime) -> ColumnElement[str]:
    """SQL for each worker's state, "idle", "busy" or "lost", to group workers by."""
    return case((worker_state_is("lost", lost_before), "lost"), (worker_state_is("busy", lost_before), "busy"),
                else_="idle")


def stored_space_size(spec: dict[str, Any]) -> int | None:
    """The search space's size from a stored spec, checking nothing but the domains and the search.

    For a sweep whose spec no longer parses as a whole (its model's plugin is not loaded, say): a read
    must still answer.
    """
    hparams = {name: _domains.validate_python(raw) if isinstance(raw, dict) else raw
               for name, raw in spec.get("hparams", {}).items()}
    search = SearchSettings.model_validate(spec.get("search", {}))
    return make_strategy(SweepSpec.model_construct(hparams=hparams, search=search)).size


_domains: TypeAdapter[Any] = TypeAdapter(Domain)


def _best_first(value: ColumnElement[Any], objective: Objective) -> ColumnElement[Any]:
    return value.desc() if objective.goal == "maximize" else value.asc()


def _hparam_value(sweep: SweepRow, name: str) -> ColumnElement[Any]:
    """The hparam as SQL of its own kind, so numbers sort as numbers and strings as strings."""
    hparams: dict[str, Any] = sweep.spec.get("hparams", {})
    if name not in hparams:
        raise QueryError("sort", f"sweep {sweep.id} has no hparam {name!r}; its hparams: {', '.join(hparams)}")
    element = TrialRow.hparams[name]
    kind = _kind(hparams[name])
    if kind is bool:
        return element.as_boolean()
    if kind is str:
        return element.as_string()
    return element.as_float()


def _kind(domain: Any) -> type:
    """bool, str or float: what values a stored hparam domain (or bare value) takes."""
    if isinstance(domain, dict):
        kind = domain.get("type")
        if kind in ("real_interval", "int_interval"):
            return float
        sample = domain.get("value") if kind == "fixed" else (domain.get("values") or [None])[0]
        return _kind(sample)
    if isinstance(domain, bool):
        return bool
    return str if isinstance(domain, str) else float

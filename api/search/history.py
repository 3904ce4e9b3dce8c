"""A sweep's Optuna study, in memory, kept in step with sweeper's tables.

Built once from the database (every trial, the objective at each epoch of the finished ones, and what the
sampler and pruner kept of each in `search_state`), then brought up to date at every decision with one
query: the trials created since, and those that were still pending or running. Finished trials never
change, so a claim on a sweep of 1,000 finished trials reads only the few that moved.

The database stays the record: anything in memory that it does not confirm (a proposal or a decision whose
transaction rolled back) makes the next sync rebuild the study from it. Trial numbers are sweeper's
per-sweep trial indexes; the study's name is the sweep's, so Hyperband's brackets (a hash of both) are the
same in every server process.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.pruners import BasePruner
from optuna.storages import InMemoryStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState as StudyState, create_trial
from sqlalchemy import Connection, or_, select

from sweeper import SearchDomain, SweepSpec, value_key
from sweeper.messages import TrialState

from api.models import SweepRow, TrialEpochRow, TrialRow
from api.search.space import params

optuna.logging.set_verbosity(optuna.logging.WARNING)

_ACTIVE = (TrialState.pending, TrialState.running)
_LISTED_IDS = 500
"""Trials whose curves are read by a list of ids; more are read by sweep (SQLite takes 32,766 parameters)."""


def study_name(sweep_id: int) -> str:
    return f"sweeper-sweep-{sweep_id}"


def config_key(config: dict[str, Any]) -> frozenset[tuple[str, tuple[type, Any]]]:
    """What makes two configurations the same one (1, 1.0 and True are different values)."""
    return frozenset((name, value_key(value)) for name, value in config.items())


@dataclass
class _Known:
    """A trial as the study holds it."""

    study_trial_id: int
    active: bool
    """Pending or running in the database, so RUNNING in the study."""
    system_attrs: dict[str, Any] = field(default_factory=dict)


class SweepHistory:
    """One sweep's study and what it knows of each trial; use under `lock`, inside the caller's transaction."""

    def __init__(self, sweep_id: int, spec: SweepSpec, pruner: BasePruner | None):
        self.sweep_id = sweep_id
        self.spec = spec
        self.space: dict[str, SearchDomain] = spec.search_space()
        self.metric = spec.objective.metric
        """The objective the stopping rule judges (a sweep with a stopping rule has one)."""
        self.objectives = spec.all_objectives
        self.directions = [StudyDirection.MAXIMIZE if objective.goal == "maximize" else StudyDirection.MINIMIZE
                           for objective in self.objectives]
        self.direction = self.directions[0]
        self.pruner = pruner
        self.lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.storage = InMemoryStorage()
        self.study = optuna.create_study(storage=self.storage, study_name=study_name(self.sweep_id),
                                         directions=self.directions, pruner=self.pruner)
        self.study_id = self.storage.get_study_id_from_name(study_name(self.sweep_id))
        self.known: list[_Known] = []
        """This sweep's trials by index; in the study, trial `index` has number `offset + index`."""
        self.offset = 0
        """How many warm-start trials (search.warm_start) come first in the study."""
        self.warmed = False
        self.configs: set[frozenset[tuple[str, tuple[type, Any]]]] = set()
        self.study_attrs: dict[str, Any] = {}
        self.stale = False

    # -- keeping in step with the database ---------------------------------------------------------

    def sync(self, connection: Connection) -> None:
        """Bring the study up to date with the sweep's trials as this transaction sees them."""
        sweep = connection.execute(select(SweepRow.next_index, SweepRow.search_state)
                                   .where(SweepRow.id == self.sweep_id)).one()
        study_attrs = sweep.search_state or {}
        if self.stale or len(self.known) > sweep.next_index or (self.known and study_attrs != self.study_attrs):
            self._reset()  # something in memory was never committed, or another server process moved on
        if not self.warmed:
            self._warm_start(connection)
        if study_attrs != self.study_attrs:
            self._set_study_attrs(study_attrs)
        active = [number for number, known in enumerate(self.known) if known.active]
        rows = connection.execute(
            select(TrialRow.id, TrialRow.index, TrialRow.state, TrialRow.hparams, TrialRow.metrics,
                   TrialRow.search_state)
            .where(TrialRow.sweep_id == self.sweep_id,
                   or_(TrialRow.index >= len(self.known), TrialRow.index.in_(active), TrialRow.state.in_(_ACTIVE)))
            .order_by(TrialRow.index)).all()
        finished = [row for row in rows if TrialState(row.state) not in _ACTIVE]
        curves = self._curves(connection, [row.id for row in finished])
        for row in rows:
            state = TrialState(row.state)
            attrs = dict(row.search_state or {})
            if row.index == len(self.known):
                self._add(row.hparams, state, row.metrics, curves.get(row.id, {}), attrs)
            elif row.index > len(self.known):
                self._reset()  # a gap cannot be: trials are created in index order, each once
                return self.sync(connection)
            else:
                known = self.known[row.index]
                if not known.active or set(known.system_attrs) - set(attrs):
                    self._reset()  # a finished trial moved, or memory holds what was rolled back
                    return self.sync(connection)
                if attrs != known.system_attrs:  # another server process decided about it
                    for key, value in attrs.items():
                        self.storage.set_trial_system_attr(known.study_trial_id, key, value)
                    known.system_attrs = attrs
                if state not in _ACTIVE:
                    self._finish(known, state, row.metrics, curves.get(row.id, {}))
        return None

    def _warm_start(self, connection: Connection) -> None:
        """The earlier sweeps' trials that had completed or been pruned when this sweep was created, as finished
        trials of the study: a fixed set, so the study's numbering never shifts. What their sampler and
        stopping rule kept of them is left behind: their rungs were another sweep's."""
        self.warmed = True
        if not self.spec.search.warm_start:
            return
        created = connection.execute(select(SweepRow.created_at).where(SweepRow.id == self.sweep_id)).scalar_one()
        rows = connection.execute(
            select(TrialRow.id, TrialRow.state, TrialRow.hparams, TrialRow.metrics)
            .where(TrialRow.sweep_id.in_(list(self.spec.search.warm_start or [])),
                   TrialRow.state.in_((TrialState.completed, TrialState.pruned)), TrialRow.finished_at <= created)
            .order_by(TrialRow.id)).all()
        curves = self._curves(connection, [row.id for row in rows])
        for row in rows:
            values, distributions = params(row.hparams, self.space)
            state, value = self._outcome(TrialState(row.state), row.metrics, curves.get(row.id, {}))
            self.study.add_trial(create_trial(state=state, values=value, params=values, distributions=distributions,
                                              intermediate_values=_finite(curves.get(row.id, {}))))
        self.offset = len(rows)

    def _set_study_attrs(self, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            self.storage.set_study_system_attr(self.study_id, key, value)
        self.study_attrs = dict(attrs)

    def _curves(self, connection: Connection, trial_ids: Sequence[int]) -> dict[int, dict[int, float]]:
        """The objective at each epoch of these trials, as Optuna steps (epochs trained: epoch + 1)."""
        curves: dict[int, dict[int, float]] = {}
        if not trial_ids:
            return curves
        value = TrialEpochRow.metrics[self.metric].as_float()
        query = select(TrialEpochRow.trial_id, TrialEpochRow.epoch, value)
        if len(trial_ids) <= _LISTED_IDS:
            query = query.where(TrialEpochRow.trial_id.in_(list(trial_ids)))
        else:  # a rebuild: by sweep, not by a list of ids longer than a database takes as parameters
            query = query.join(TrialRow, TrialRow.id == TrialEpochRow.trial_id).where(
                TrialRow.sweep_id.in_([self.sweep_id, *(self.spec.search.warm_start or [])]),
                TrialRow.state.in_((TrialState.completed, TrialState.pruned, TrialState.failed, TrialState.cancelled)))
        wanted = set(trial_ids)
        for trial_id, epoch, reported in connection.execute(query):
            if trial_id in wanted:
                curves.setdefault(trial_id, {})[epoch + 1] = math.nan if reported is None else float(reported)
        return curves

    def _add(self, config: dict[str, Any], state: TrialState, metrics: dict[str, Any], curve: dict[int, float],
             attrs: dict[str, Any]) -> None:
        values, distributions = params(config, self.space)
        study_state, value = self._outcome(state, metrics, curve)
        trial = create_trial(state=study_state, values=value, params=values, distributions=distributions,
                             system_attrs=attrs, intermediate_values=_finite(curve) if study_state != StudyState.RUNNING
                             else None)
        self.study.add_trial(trial)
        study_trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id,
                                                                              self.offset + len(self.known))
        self.known.append(_Known(study_trial_id, state in _ACTIVE, attrs))
        self.configs.add(config_key(config))

    def _finish(self, known: _Known, state: TrialState, metrics: dict[str, Any], curve: dict[int, float]) -> None:
        study_state, value = self._outcome(state, metrics, curve)
        for step, reported in _finite(curve).items():
            self.storage.set_trial_intermediate_value(known.study_trial_id, step, reported)
        self.storage.set_trial_state_values(known.study_trial_id, study_state, value)
        known.active = False

    def _outcome(self, state: TrialState, metrics: dict[str, Any], curve: dict[int, float]
                 ) -> tuple[StudyState, list[float] | None]:
        """The trial's state and objective values for the sampler. Pruned trials count, by their curves (TPE
        ranks them by the last epoch they reached); a trial without a finite value of every objective counts
        as failed."""
        if state in _ACTIVE:
            return StudyState.RUNNING, None
        if state == TrialState.pruned:
            return (StudyState.PRUNED, None) if _finite(curve) else (StudyState.FAIL, None)
        values = [metrics.get(objective.metric) for objective in self.objectives]
        if state == TrialState.completed and all(isinstance(value, (int, float)) and math.isfinite(value)
                                                 for value in values):
            return StudyState.COMPLETE, [float(value) for value in values]  # type: ignore[arg-type]
        return StudyState.FAIL, None

    # -- reading ------------------------------------------------------------------------------------

    def trial(self, number: int) -> FrozenTrial:
        return self.storage.get_trial(self.known[number].study_trial_id)

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def study_trial_id(self, number: int) -> int:
        return self.known[number].study_trial_id

    def remember(self, number: int, attrs: dict[str, Any]) -> None:
        """The trial's system attributes as they are now stored in the database."""
        self.known[number].system_attrs = dict(attrs)

    def asked(self, study_trial_id: int, config: dict[str, Any], attrs: dict[str, Any]) -> None:
        """A trial the study just proposed (RUNNING in the study, about to be inserted as running)."""
        self.known.append(_Known(study_trial_id, True, dict(attrs)))
        self.configs.add(config_key(config))

    def study_attrs_now(self) -> dict[str, Any]:
        return dict(self.storage.get_study_system_attrs(self.study_id))

    def distributions(self, config: dict[str, Any]) -> dict[str, BaseDistribution]:
        return params(config, self.space)[1]


def _finite(curve: dict[int, float]) -> dict[int, float]:
    return {step: value for step, value in curve.items() if math.isfinite(value)}

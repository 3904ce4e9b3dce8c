"""Reads for analysing a sweep: its trials as an Optuna study (for parameter importance) and all its trials
for an export."""

from __future__ import annotations

from dataclasses import dataclass

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from sqlalchemy import func, select

from sweeper import SweepSpec
from sweeper.messages import TrialState

from api.models import TrialRow
from api.search.history import SweepHistory
from api.storage.base import Store


@dataclass(frozen=True)
class SweepStudy:
    """A sweep's own trials as Optuna sees them (warm-start trials of earlier sweeps left out)."""

    spec: SweepSpec
    trials: list[FrozenTrial]
    directions: list[StudyDirection]


class SweepAnalysis(Store):
    """What the analysis views read."""

    def sweep_study(self, sweep_id: int) -> SweepStudy:
        """The sweep's trials as FrozenTrials, built as the samplers build them (api.search.history).

        Read in one short transaction; whatever is computed from them (a forest, for importance) runs after it.
        """
        with self._session.begin():
            sweep = self._sweep(sweep_id)
            spec = self._plans.get(sweep).spec
            history = SweepHistory(sweep_id, spec, pruner=None)
            history.sync(self._session.connection())
            return SweepStudy(spec, list(history.trials()[history.offset:]), list(history.directions))

    def completed_count(self, sweep_id: int) -> int:
        """How many of the sweep's trials have completed: what a cached importance is keyed on."""
        with self._session.begin():
            self._sweep(sweep_id)
            return self._session.scalar(select(func.count()).select_from(TrialRow).where(
                TrialRow.sweep_id == sweep_id, TrialRow.state == TrialState.completed)) or 0

    def all_trials(self, sweep_id: int, state: TrialState | None = None) -> tuple[SweepSpec, list[TrialRow]]:
        """The sweep's spec and every trial (of one state, if given) in search order."""
        with self._session.begin():
            sweep = self._sweep(sweep_id)
            query = select(TrialRow).where(TrialRow.sweep_id == sweep_id)
            if state is not None:
                query = query.where(TrialRow.state == state)
            return self._plans.get(sweep).spec, list(self._session.scalars(query.order_by(TrialRow.index)))

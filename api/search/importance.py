"""Which hparams matter: each searched hparam's importance for a sweep's objective, by Optuna's evaluators.

The sweep's completed trials come as Optuna FrozenTrials from its study in memory (api.search.history, the
same one the samplers use); the evaluation runs on them alone, outside any database transaction, since a
forest of a few thousand trials takes a second or more. Every evaluator is seeded, so the same trials give
the same answer.
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import optuna
from optuna.importance import (BaseImportanceEvaluator, FanovaImportanceEvaluator,
                               MeanDecreaseImpurityImportanceEvaluator, PedAnovaImportanceEvaluator)
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState as StudyState, create_trial

from sweeper import Objective

MIN_COMPLETED = 4
"""Completed trials an importance needs: with fewer, any split of them 'explains' the objective."""
FANOVA_MAX_TRIALS = 200
"""fANOVA judges at most this many completed trials, a seeded sample of them: its cost grows with the trials
(its 64 trees are grown to full depth), to seconds for a few hundred and minutes for thousands, while the
ranking of a handful of hparams is settled long before. The other evaluators take every trial."""
SEED = 0


class ImportanceEvaluator(StrEnum):
    fanova = "fanova"
    """fANOVA (Hutter et al., 2014): the objective's variance each hparam explains, by a random forest."""
    ped_anova = "ped_anova"
    """PED-ANOVA (Watanabe et al., 2023): how differently each hparam is spread among the top trials."""
    mean_decrease_impurity = "mean_decrease_impurity"
    """A random forest's mean decrease in impurity per hparam."""


@dataclass(frozen=True)
class Importances:
    objective: Objective
    evaluator: ImportanceEvaluator
    completed: int
    """The completed trials with a value of every objective."""
    judged: int
    """How many of them the evaluator judged: all, or fANOVA's seeded sample of FANOVA_MAX_TRIALS."""
    importances: dict[str, float]
    """Each searched hparam's share of the importance (they sum to 1), largest first; empty with a `reason`."""
    reason: str | None = None
    """Why there are none: too few completed trials, or no hparam searched."""


def _evaluator(kind: ImportanceEvaluator) -> BaseImportanceEvaluator:
    if kind == ImportanceEvaluator.fanova:
        return FanovaImportanceEvaluator(seed=SEED)
    if kind == ImportanceEvaluator.mean_decrease_impurity:
        return MeanDecreaseImpurityImportanceEvaluator(seed=SEED)
    return PedAnovaImportanceEvaluator()  # deterministic: no forest


def param_importances(trials: Sequence[FrozenTrial], objective: Objective, directions: Sequence[StudyDirection],
                      kind: ImportanceEvaluator = ImportanceEvaluator.fanova) -> Importances:
    """The importance of each hparam for the first objective, over the completed trials among `trials`.

    Hparams that take one value in every trial (a one-value discrete) cannot matter and are left out; so are
    conditional ones, except with PED-ANOVA, which judges them on the trials where they are active.
    """
    completed = [trial for trial in trials if trial.state == StudyState.COMPLETE]
    if len(completed) < MIN_COMPLETED:
        return Importances(objective, kind, len(completed), 0, {},
                           f"parameter importance needs at least {MIN_COMPLETED} completed trials with a value of "
                           f"{objective.metric}; the sweep has {len(completed)}")
    judged = completed
    if kind == ImportanceEvaluator.fanova and len(completed) > FANOVA_MAX_TRIALS:
        judged = sorted(random.Random(SEED).sample(completed, FANOVA_MAX_TRIALS), key=lambda trial: trial.number)
    # A study of the first objective alone: every evaluator then ranks by its direction (PED-ANOVA's top
    # trials are the best ones, whichever the goal), a multi-objective sweep's included.
    study = optuna.create_study(direction=directions[0])
    study.add_trials([create_trial(state=StudyState.COMPLETE, value=trial.values[0], params=trial.params,
                                   distributions=trial.distributions) for trial in judged])
    searched = {name for trial in completed for name, distribution in trial.distributions.items()
                if not distribution.single()}
    if not searched:
        return Importances(objective, kind, len(completed), 0, {},
                           "the sweep searches no hparam: every one has a single value")
    found = optuna.importance.get_param_importances(study, evaluator=_evaluator(kind))
    return Importances(objective, kind, len(completed), len(judged),
                       {name: float(value) for name, value in found.items() if name in searched})


class ImportanceCache:
    """Importances by (sweep, evaluator, completed trials): a sweep's completed trials never change, so the
    answer holds until another one completes, and a page polling the sweep costs one evaluation per change."""

    def __init__(self, size: int = 256):
        self._size = size
        self._found: OrderedDict[tuple[int, ImportanceEvaluator, int], Importances] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sweep_id: int, kind: ImportanceEvaluator, completed: int,
            compute: Callable[[], Importances]) -> Importances:
        key = (sweep_id, kind, completed)
        with self._lock:
            found = self._found.get(key)
            if found is not None:
                self._found.move_to_end(key)
                return found
        found = compute()  # outside the lock: two first requests may both compute, and agree
        with self._lock:
            self._found[key] = found
            while len(self._found) > self._size:
                self._found.popitem(last=False)
        return found

"""The stopping rules as Optuna pruners, and each decision with the reason a user can check.

Optuna's pruners answer yes or no; the reason stored beside the answer (the rung, the cutoff, how many
trials the value was compared with) is read from the same data the pruner just used: the rung values it
recorded in the trials' system attributes (asha, hyperband), or the completed trials' curves (median).

Steps are epochs trained (epoch index + 1), so `min_epochs: 1` puts the first rung after one epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, SuccessiveHalvingPruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState as StudyState

from sweeper import SweepSpec

from api.search.history import SweepHistory

MEDIAN_STARTUP_TRIALS = 3
"""median: trials that must complete before any is stopped (Katib's default; Optuna's is 5)."""

_RUNG = "completed_rung_"


@dataclass(frozen=True)
class Decision:
    prune: bool
    details: dict[str, Any]
    """What the decision was based on: rule, epoch, rung, value, cutoff, compared_with."""
    reason: str | None = None
    """One sentence for a pruned trial; None when it goes on."""

    def stored(self) -> dict[str, Any]:
        return {"action": "prune" if self.prune else "continue", **self.details,
                **({"reason": self.reason} if self.reason else {})}


def pruner_for(spec: SweepSpec) -> BasePruner | None:
    """The spec's stopping rule as an Optuna pruner; None without one."""
    stopping = spec.stopping
    if stopping is None or not stopping.active:
        return None
    if stopping.rule == "asha":
        # Stopping-based asynchronous successive halving: a trial goes on past a rung only if it is in the top
        # 1/reduction_factor of the trials that reached that rung so far.
        return SuccessiveHalvingPruner(min_resource=stopping.min_epochs, reduction_factor=stopping.reduction_factor,
                                       min_early_stopping_rate=0)
    if stopping.rule == "hyperband":
        return HyperbandPruner(min_resource=stopping.min_epochs, max_resource=spec.train.epochs,
                               reduction_factor=stopping.reduction_factor)
    assert stopping.rule == "median"
    return MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=stopping.min_epochs, n_min_trials=1)


def judge(history: SweepHistory, number: int, epoch: int, curve: dict[int, float]) -> Decision:
    """Run the stopping rule on trial `number` after `epoch` (from 0), its objective per step in `curve`.

    The trial's curve is set into the study first (the epochs this transaction sees, a resumed trial's
    earlier ones included); the pruner may record a rung value in the trial's system attributes.
    """
    assert history.pruner is not None
    spec = history.spec
    assert spec.stopping is not None
    step = epoch + 1
    if step >= spec.train.epochs:
        # The trial has trained every epoch: stopping it now saves nothing, and it ends completed, a result
        # like any other (a rung that falls on the last epoch would otherwise prune it after its training).
        return Decision(False, {"rule": spec.stopping.rule, "epoch": epoch, "last_epoch": True})
    study_trial_id = history.study_trial_id(number)
    for at, value in sorted(curve.items()):
        if at <= step and math.isfinite(value):
            history.storage.set_trial_intermediate_value(study_trial_id, at, value)
    value = curve.get(step, math.nan)
    if math.isnan(value):
        history.storage.set_trial_intermediate_value(study_trial_id, step, math.nan)
    trial = history.trial(number)
    pruned = history.pruner.prune(history.study, trial)
    trial = history.trial(number)
    details: dict[str, Any] = {"rule": spec.stopping.rule, "epoch": epoch}
    if isinstance(history.pruner, MedianPruner):
        return _median_decision(history, trial, step, pruned, details)
    return _rung_decision(history, trial, step, pruned, details)


def _rung_decision(history: SweepHistory, trial: FrozenTrial, step: int, pruned: bool,
                   details: dict[str, Any]) -> Decision:
    rungs = sorted(int(key[len(_RUNG):]) for key in trial.system_attrs if key.startswith(_RUNG))
    metric = history.metric
    if not rungs:
        value = trial.intermediate_values.get(step, math.nan)
        if pruned:  # successive halving stops a trial whose objective is not a number
            return Decision(True, {**details, "value": None},
                            f"{metric} is not a number after epoch {step}")
        return Decision(False, details)
    rung = rungs[-1]
    key = f"{_RUNG}{rung}"
    value = float(trial.system_attrs[key])
    spec = history.spec
    assert spec.stopping is not None
    factor = spec.stopping.reduction_factor
    peers = _rung_peers(history, trial)
    competing = sorted(float(peer.system_attrs[key]) for peer in peers if key in peer.system_attrs)
    if trial.number not in {peer.number for peer in peers}:
        competing = sorted([*competing, value])
    keep = max(len(competing) // factor, 1)
    maximize = history.direction == StudyDirection.MAXIMIZE
    cutoff = competing[-keep] if maximize else competing[keep - 1]
    bracket = _bracket(history, trial)
    rung_epochs = spec.stopping.min_epochs * factor ** (rung + (bracket or 0))
    details.update(rung=rung, rung_epochs=rung_epochs, value=value, cutoff=cutoff,
                   compared_with=len(competing) - 1, **({"bracket": bracket} if bracket is not None else {}))
    if not pruned:
        return Decision(False, details)
    where = f" of bracket {bracket}" if bracket is not None else ""
    return Decision(True, details, f"{metric} {value:.6g} at rung {rung}{where} ({rung_epochs} epochs) is not in the "
                                   f"top 1/{factor} of the {len(competing)} trials that reached it (cutoff "
                                   f"{cutoff:.6g})")


def _rung_peers(history: SweepHistory, trial: FrozenTrial) -> list[FrozenTrial]:
    """The trials this one is compared with: all of the sweep's (asha), or its bracket's (hyperband)."""
    trials = history.trials()
    bracket = _bracket(history, trial)
    if bracket is None:
        return trials
    pruner = history.pruner
    assert isinstance(pruner, HyperbandPruner)
    # Optuna assigns brackets by a hash of the study name and trial number; the same function says which.
    return [peer for peer in trials if pruner._get_bracket_id(history.study, peer) == bracket]


def _bracket(history: SweepHistory, trial: FrozenTrial) -> int | None:
    pruner = history.pruner
    if not isinstance(pruner, HyperbandPruner):
        return None
    return int(pruner._get_bracket_id(history.study, trial))


def _median_decision(history: SweepHistory, trial: FrozenTrial, step: int, pruned: bool,
                     details: dict[str, Any]) -> Decision:
    completed = [peer for peer in history.trials() if peer.state == StudyState.COMPLETE]
    at_step = [peer.intermediate_values[step] for peer in completed if step in peer.intermediate_values]
    values = [value for value in trial.intermediate_values.values() if not math.isnan(value)]
    maximize = history.direction == StudyDirection.MAXIMIZE
    best = (max(values) if maximize else min(values)) if values else math.nan
    median = float(np.nanmedian(at_step)) if at_step else math.nan
    details.update(value=None if math.isnan(best) else best, cutoff=None if math.isnan(median) else median,
                   compared_with=len(at_step))
    if not pruned:
        return Decision(False, details)
    metric = history.metric
    if math.isnan(best):
        return Decision(True, details, f"{metric} is not a number after epoch {step}")
    side = "below" if maximize else "above"
    return Decision(True, details, f"best {metric} so far {best:.6g} is {side} the median {median:.6g} of the "
                                   f"{len(at_step)} completed trials at epoch {step}")

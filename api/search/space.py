"""A sweep's search space in Optuna's terms: each searched hparam as a distribution, suggested define-by-run.

Conditional hparams (`when`) are suggested only where their conditions hold, parents first, so a trial's
Optuna params are exactly its searched, active hparams; fixed values are never suggested. Values come
back as sweeper's domains write them: a stepped real as the decimal the user wrote (0.3, not
0.30000000000000004), a discrete value as the listed one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import Trial

from sweeper import Discrete, Fixed, IntInterval, RealInterval, SearchDomain, evaluation_order, holds

Config = dict[str, Any]


def distribution(domain: SearchDomain) -> BaseDistribution | None:
    """The hparam's Optuna distribution; None for a fixed value, which is never sampled."""
    if isinstance(domain, Fixed):
        return None
    if isinstance(domain, Discrete):
        return CategoricalDistribution(domain.values)
    if isinstance(domain, RealInterval):
        return FloatDistribution(domain.min, domain.max, log=domain.log, step=domain.step)
    assert isinstance(domain, IntInterval)
    return IntDistribution(domain.min, domain.max, log=domain.log, step=domain.step or 1)


def suggest(trial: Trial, space: Mapping[str, SearchDomain]) -> Config:
    """A configuration from the trial's sampler: parents first, and only the hparams whose conditions hold."""
    active: Config = {}
    for name in evaluation_order(space):
        domain = space[name]
        if not holds(domain, active):
            continue
        active[name] = _suggested(trial, name, domain)
    return {name: active[name] for name in space if name in active}


def _suggested(trial: Trial, name: str, domain: SearchDomain) -> Any:
    if isinstance(domain, Fixed):
        return domain.value
    if isinstance(domain, Discrete):
        return trial.suggest_categorical(name, domain.values)
    if isinstance(domain, RealInterval):
        return exact(domain, trial.suggest_float(name, domain.min, domain.max, step=domain.step, log=domain.log))
    return trial.suggest_int(name, domain.min, domain.max, step=domain.step or 1, log=domain.log)


def params(config: Mapping[str, Any], space: Mapping[str, SearchDomain]) -> tuple[Config, dict[str, BaseDistribution]]:
    """A stored configuration as Optuna params and their distributions (fixed and unknown names left out)."""
    values: Config = {}
    distributions: dict[str, BaseDistribution] = {}
    for name, value in config.items():
        domain = space.get(name)
        found = None if domain is None else distribution(domain)
        if found is None or not domain.contains(value):  # type: ignore[union-attr]
            continue  # a warm-start trial from a wider space, say: the sampler does not see it
        values[name], distributions[name] = value, found
    return values, distributions


def exact(domain: SearchDomain, value: Any) -> Any:
    """The sampler's value as the domain writes it: a stepped real snapped to its decimal, an int as int."""
    if isinstance(domain, RealInterval):
        return domain.nearest(float(value))
    if isinstance(domain, IntInterval):
        return int(value)
    return value

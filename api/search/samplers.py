"""Each adaptive strategy's Optuna sampler, built afresh for every proposal with a seed of its own.

A sampler is seeded by (the sweep's seed, the trial's number), not once per sweep: a sampler's random
state would not survive a restart, and one shared generator would make the proposal for trial k depend on
which claims happened to reach this server process before it (Optuna #3790, #4714). With a seed per
number, a sequential run is reproducible from the spec's seed, and a restarted server proposes what the
old one would have.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.samplers import BaseSampler, CmaEsSampler, NSGAIISampler, RandomSampler, TPESampler

from sweeper import SpecError, SweepSpec

NSGA2_POPULATION = (8, 50)
"""NSGA-II's generation size: a quarter of max_trials, within these bounds (Optuna's default is 50, which
would leave a sweep of 60 trials with one generation of random configurations)."""


def trial_seed(sweep_seed: int, number: int) -> int:
    """The seed of the sampler that proposes trial `number`: stable across processes and restarts."""
    digest = hashlib.blake2b(f"sweeper:{sweep_seed}:{number}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def sampler_for(spec: SweepSpec) -> Callable[[int], BaseSampler]:
    """A factory of the spec's sampler, given the number of the trial it is to propose."""
    search = spec.search
    if search.strategy == "tpe":
        # multivariate and group: joint densities, split where conditions switch hparams off; constant_liar:
        # running trials count as bad results, so 64 workers claiming at once spread out instead of piling
        # onto the same promising corner. Both set explicitly, as Optuna's defaults have changed before.
        return lambda number: _tpe(trial_seed(search.seed, number))
    if search.strategy == "gp":
        return lambda number: optuna.samplers.GPSampler(seed=trial_seed(search.seed, number))
    if search.strategy == "cmaes":
        # CMA-ES moves a Gaussian over the intervals; discrete hparams are drawn by the independent sampler
        # (uniformly at random), as docs/spec.md says.
        return lambda number: CmaEsSampler(seed=trial_seed(search.seed, number), warn_independent_sampling=False,
                                           independent_sampler=RandomSampler(seed=trial_seed(search.seed, number)))
    if search.strategy == "nsga2":
        assert search.max_trials is not None
        low, high = NSGA2_POPULATION
        population = max(low, min(high, search.max_trials // 4))
        return lambda number: NSGAIISampler(seed=trial_seed(search.seed, number), population_size=population)
    raise ValueError(f"{search.strategy} search has no sampler: it is not adaptive")


def _tpe(seed: int) -> TPESampler:
    with warnings.catch_warnings():
        # `group` has been experimental since Optuna 2.8; the warning would be logged at every claim.
        warnings.simplefilter("ignore", ExperimentalWarning)
        return TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def require_sampler(spec: SweepSpec) -> None:
    """SpecError (422 at search.strategy) when this server cannot run the spec's sampler."""
    problems = sampler_problems(spec.search.strategy)
    if problems:
        raise SpecError(problems)


def sampler_problems(strategy: object) -> list[tuple[tuple[str | int, ...], str]]:
    """The problem, at search.strategy, when this server cannot run the sampler of `strategy` (a name, as
    written in a spec that may be broken otherwise); none when it can."""
    missing = gp_available() if strategy == "gp" else None
    return [] if missing is None else [(("search", "strategy"), missing)]


def gp_available() -> str | None:
    """Why the gp strategy cannot run on this server (its sampler needs PyTorch), or None when it can."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return ("gp needs PyTorch on the server, which is not installed: pip install 'sweeper[gp]', "
                "or use tpe, which needs nothing more")
    return None

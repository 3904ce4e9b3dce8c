"""What the storage layer asks of the search, inside its transaction: a configuration for a new trial of an
adaptive sweep, and the stopping rule's decision on an epoch report.

Both bring the sweep's study up to date with the transaction first, and return what must be stored with
the trial before the answer goes out: the sampler's and pruner's state (`search_state`) and the decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from sweeper import Discrete, Fixed, RandomStrategy, SweeperError, SweepSpec

from api.search.history import SweepHistory, config_key
from api.search.samplers import sampler_for
from api.search.space import params, suggest
from api.search.stopping import Decision, judge, pruner_for

logger = logging.getLogger("api.search")


class SearchError(SweeperError):
    """The sampler could not propose a configuration: the sweep cannot go on."""


@dataclass(frozen=True)
class Proposal:
    config: dict[str, Any]
    trial_state: dict[str, Any]
    """The new trial's search_state: what the sampler keeps of it."""
    sweep_state: dict[str, Any] | None
    """The sweep's search_state, when the sampler changed it; None when unchanged."""


class Search:
    """A sweep's adaptive search and stopping rule, over its study in memory (api.search.history)."""

    def __init__(self, sweep_id: int, spec: SweepSpec):
        self.spec = spec
        self.history = SweepHistory(sweep_id, spec, pruner_for(spec))
        self._sampler = sampler_for(spec) if spec.search.adaptive else None
        space = spec.search_space()
        # In a space of listed values no configuration is proposed twice: a repeat is swapped for the first
        # unused one in a seeded random order, the one random search would walk.
        self._listed = RandomStrategy(spec.model_copy(update={"search": spec.search.model_copy(
            update={"strategy": "random", "max_trials": None})})) \
            if all(isinstance(domain, (Discrete, Fixed)) for domain in space.values()) else None

    def propose(self, connection: Connection, number: int) -> Proposal:
        """The configuration of trial `number`, sampled with the sweep's running trials as pending."""
        assert self._sampler is not None, "only an adaptive sweep proposes"
        history = self.history
        with history.lock:
            try:
                history.sync(connection)
                if len(history.known) != number:
                    raise RuntimeError(f"the study holds {len(history.known)} trials, but trial {number} is next")
                history.study.sampler = self._sampler(number)
                trial = history.study.ask()
                config = suggest(trial, history.space)
                study_trial_id = history.storage.get_trial_id_from_study_id_trial_number(
                    history.study_id, history.offset + number)
                if self._listed is not None and config_key(config) in history.configs:
                    config = self._unused(history, study_trial_id, config)
                attrs = dict(history.storage.get_trial_system_attrs(study_trial_id))
                history.asked(study_trial_id, config, attrs)
                now = history.study_attrs_now()
                changed = now != history.study_attrs
                history.study_attrs = now
                return Proposal(config, attrs, now if changed else None)
            except Exception as error:
                history.stale = True
                logger.exception("sweep %d: the %s sampler failed on trial %d", history.sweep_id,
                                 self.spec.search.strategy, number)
                raise SearchError(f"the {self.spec.search.strategy} sampler failed on trial {number}: "
                                  f"{type(error).__name__}: {error}") from error

    def _unused(self, history: SweepHistory, study_trial_id: int, repeated: dict[str, Any]) -> dict[str, Any]:
        assert self._listed is not None
        for index in range(self._listed.total):
            config = self._listed.config_at(index)
            if config_key(config) in history.configs:
                continue
            values, distributions = params(config, history.space)
            if set(values) == set(params(repeated, history.space)[0]):
                for name, value in values.items():
                    history.storage.set_trial_param(study_trial_id, name,
                                                    distributions[name].to_internal_repr(value), distributions[name])
            else:
                history.stale = True  # its params differ in name: the study is rebuilt from the database next time
            return config
        raise RuntimeError("every configuration of the space has been proposed")

    def decide(self, connection: Connection, number: int, epoch: int, curve: dict[int, float]) -> tuple[
            Decision, dict[str, Any]]:
        """The stopping rule on trial `number` after `epoch`, and the trial's search_state after it."""
        history = self.history
        with history.lock:
            try:
                history.sync(connection)
                decision = judge(history, number, epoch, curve)
                attrs = dict(history.trial(number).system_attrs)
                history.remember(number, attrs)
                return decision, attrs
            except Exception:
                history.stale = True
                raise

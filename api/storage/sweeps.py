"""Sweeps: creating, reading and listing them and their trials, and their control (pause, resume, cancel)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from sweeper import Objective, SpecError, SweeperError, SweepSpec, log_location, make_strategy, parse_spec
from sweeper.messages import SweepStatus, TrialState

from api.lifecycle import SweepEvent
from api.models import SweepRow, TrialEpochRow, TrialRow, WorkerRow
from api.queries import (FirstFailure, ObjectivePoint, SortOrder, best_trials, first_failures, is_multi_objective,
                         objective_of, objective_points, ordered_trials, pareto_fronts, stored_space_size, trial_stats)
from api.storage.base import SweepPlan, Store, TrialNumberNotFoundError, next_status

CANCELLED_ON_REQUEST = "cancelled on request"
"""The reason of a sweep cancelled through the API."""


@dataclass(frozen=True)
class SweepSummary:
    sweep: SweepRow
    trial_counts: dict[TrialState, int]
    best_trial: TrialRow | None
    space_size: int | None
    """Distinct configurations in the search space (the grid's size); None when intervals make it endless."""
    started_at: datetime | None = None
    """When its first trial started; None before any did."""
    pareto_front: list[tuple[int, int]] | None = None
    """A multi-objective sweep's completed trials that no other beats in every objective, as (id, number);
    None with one objective."""
    first_failure: FirstFailure | None = None
    """Its first trial to fail for good, with the error; None while none has."""
    waiting_for: WorkerWanted | None = None
    """The worker its trials wait for when no connected worker can run them; None when one can, or when
    the sweep has no trial left to hand out."""


@dataclass(frozen=True)
class WorkerWanted:
    """A running sweep with trials to hand out, none of which a connected worker can run: each needs
    `gpus_per_trial` GPUs, and the connected workers (seen within the lease TTL) have at most `most_gpus`
    (None: no worker is connected)."""

    gpus_per_trial: int
    most_gpus: int | None

    def __str__(self) -> str:
        wanted = f"a worker with {self.gpus_per_trial} GPUs"
        if self.most_gpus is None:
            return f"{wanted}: no worker is connected"
        return f"{wanted}: the connected workers have at most {self.most_gpus}"


@dataclass(frozen=True)
class ObjectiveSeries:
    """A sweep's objective and every completed trial's value of it, in index order."""

    objective: Objective
    points: list[ObjectivePoint]


@dataclass(frozen=True)
class TrialHistory:
    trial: TrialRow
    epochs: list[TrialEpochRow]



def _has_work_left(sweep: SweepRow, counts: dict[TrialState, int]) -> bool:
    """Running, with a pending trial or one not generated yet: a worker could be handed one of its trials."""
    return sweep.status == SweepStatus.running and (counts[TrialState.pending] > 0
                                                    or sweep.next_index < sweep.total_trials)


class SweepStore(Store):
    """Sweeps and the reads of their trials."""

    def create_sweep(self, spec: SweepSpec, *, max_trials: int,
                     on_created: Callable[[int], None] | None = None) -> SweepSummary:
        """Store a new running sweep; its trials are generated one by one as workers claim them.

        `on_created(sweep_id)` runs inside the transaction, so if it raises, no sweep is left behind.
        """
        strategy = make_strategy(spec)
        self._check_warm_start(spec)
        if strategy.total > max_trials:
            raise SpecError([(("search", "max_trials"),
                              f"a sweep may have at most {max_trials} trials on this server, but this one has "
                              f"{strategy.total}; set search.max_trials to at most {max_trials}")])
        with self._session.begin():
            stored = spec.to_json()
            sweep = SweepRow(name=spec.name, status=SweepStatus.running, spec=stored,
                             total_trials=strategy.total, next_index=0, created_at=self._clock(),
                             run_digits=log_location.run_digits(strategy.total),
                             gpus_per_trial=spec.train.gpus_per_trial)
            self._session.add(sweep)
            self._session.flush()
            self._plans.put(sweep.id, SweepPlan.of(sweep.id, spec, stored, sweep.run_digits))
            if on_created is not None:
                on_created(sweep.id)
        return SweepSummary(sweep, dict.fromkeys(TrialState, 0), None, strategy.size)

    def _check_warm_start(self, spec: SweepSpec) -> None:
        """SpecError unless every sweep in search.warm_start exists and searched the same space for the same
        objective: its results would mislead the sampler otherwise."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        hparams, objective = spec.to_json()["hparams"], spec.objective.model_dump(include={"metric", "goal"})
        with self._session.begin():
            for position, sweep_id in enumerate(spec.search.warm_start or []):
                path = ("search", "warm_start", position)
                earlier = self._session.get(SweepRow, sweep_id)
                if earlier is None:
                    problems.append((path, f"sweep {sweep_id} does not exist"))
                elif earlier.spec.get("hparams") != hparams:
                    problems.append((path, f"sweep {sweep_id} searched other hparams: warm starts need the same "
                                           f"space, hparam for hparam"))
                elif {name: earlier.spec["objective"].get(name) for name in objective} != objective:
                    problems.append((path, f"sweep {sweep_id} had another objective "
                                           f"({earlier.spec['objective'].get('metric')}, "
                                           f"{earlier.spec['objective'].get('goal', 'maximize')})"))
        if problems:
            raise SpecError(problems)

    def list_sweeps(self, *, limit: int, offset: int, status: SweepStatus | None = None,
                    ) -> tuple[list[SweepSummary], int]:
        """A page of sweeps (of one status, if given), newest first, and how many there are in all.

        A fixed number of statements whatever the page size: none per sweep.
        """
        with self._session.begin():
            matching = select(SweepRow) if status is None else select(SweepRow).where(SweepRow.status == status)
            count = self._session.scalar(select(func.count()).select_from(matching.subquery())) or 0
            sweeps = list(self._session.scalars(matching.order_by(SweepRow.id.desc()).limit(limit).offset(offset)))
            return self._summaries(sweeps), count

    def get_sweep(self, sweep_id: int) -> SweepSummary:
        with self._session.begin():
            return self._summary(self._sweep(sweep_id))

    def list_trials(self, sweep_id: int, *, limit: int, offset: int, state: TrialState | None = None,
                    sort: str = "index", order: SortOrder | None = None) -> tuple[list[TrialRow], int]:
        """A page of a sweep's trials (of one state, if given), by `sort`, and how many there are.

        `sort` is index (search order), objective (best first by default), metrics.<name> or
        hparams.<name>; trials without the value come last. See api.queries.ordered_trials.
        """
        with self._session.begin():
            sweep = self._sweep(sweep_id)
            matching = select(TrialRow).where(TrialRow.sweep_id == sweep_id)
            if state is not None:
                matching = matching.where(TrialRow.state == state)
            count = self._session.scalar(select(func.count()).select_from(matching.subquery())) or 0
            trials = list(self._session.scalars(
                ordered_trials(matching, sweep, sort, order).limit(limit).offset(offset)))
            return trials, count

    def best_trial(self, sweep_id: int) -> TrialRow | None:
        """The sweep's completed trial with the best objective so far (the earliest wins a tie), if any; for a
        multi-objective sweep, by its first objective."""
        with self._session.begin():
            sweep = self._sweep(sweep_id)
            return best_trials(self._session, [sweep]).get(sweep.id)

    def objective(self, sweep_id: int) -> ObjectiveSeries:
        """The sweep's objective and each completed trial's value of it, in index order."""
        with self._session.begin():
            sweep = self._sweep(sweep_id)
            return ObjectiveSeries(objective_of(sweep), objective_points(self._session, sweep))

    def get_trial(self, trial_id: int) -> TrialHistory:
        with self._session.begin():
            return self._history(self._trial(trial_id))

    def get_trial_by_number(self, sweep_id: int, number: int) -> TrialHistory:
        """The sweep's trial `number` (from 1, TrialRow.number), with its history."""
        with self._session.begin():
            sweep = self._sweep(sweep_id)
            trial = self._session.scalar(select(TrialRow).where(TrialRow.sweep_id == sweep.id,
                                                                TrialRow.index == number - 1))
            if trial is None:
                raise TrialNumberNotFoundError(sweep.id, number, sweep.next_index)
            return self._history(trial)

    def _history(self, trial: TrialRow) -> TrialHistory:
        epochs = list(self._session.scalars(
            select(TrialEpochRow).where(TrialEpochRow.trial_id == trial.id).order_by(TrialEpochRow.epoch)))
        return TrialHistory(trial, epochs)

    def pause_sweep(self, sweep_id: int) -> SweepSummary:
        """No new trials are claimed from the sweep; its running trials finish normally."""
        with self._session.begin():
            sweep = self._sweep(sweep_id, lock=True)
            sweep.status = next_status(sweep, SweepEvent.pause)
            return self._summary(sweep)

    def resume_sweep(self, sweep_id: int) -> SweepSummary:
        """A paused sweep runs again: its pending trials and the rest of its search are claimed."""
        with self._session.begin():
            sweep = self._sweep(sweep_id, lock=True)
            sweep.status = next_status(sweep, SweepEvent.resume)
            return self._summary(sweep)

    def cancel_sweep(self, sweep_id: int) -> SweepSummary:
        """End the sweep: pending trials are cancelled, running ones are told to cancel at their next call."""
        with self._session.begin():
            sweep = self._sweep(sweep_id, lock=True)
            self._end_sweep(sweep, SweepEvent.cancel, CANCELLED_ON_REQUEST, self._clock())
            return self._summary(sweep)

    def extend_sweep(self, sweep_id: int, max_trials: int, *, server_limit: int) -> SweepSummary:
        """Raise the sweep's trial count to `max_trials`: a completed sweep runs again, and its search goes on
        from everything it has learnt (an adaptive sampler rebuilds its study from the trials so far).

        The stored spec's search.max_trials becomes `max_trials`, so the sweep reads as if submitted so.
        SpecError (422 at max_trials) when that adds no trial, or more than the server allows.
        """
        with self._session.begin():
            sweep = self._sweep(sweep_id, lock=True)
            status = next_status(sweep, SweepEvent.extend)
            if sweep.spec.get("search", {}).get("strategy") == "pbt":
                raise SpecError([(("max_trials",), f"sweep {sweep_id} is Population Based Training: its trials are "
                                                   "its population's members, trained together, so it cannot be "
                                                   "extended; submit a new sweep with a larger population")])
            stored = {**sweep.spec, "search": {**sweep.spec.get("search", {}), "max_trials": max_trials}}
            spec = parse_spec(stored, stored=True)
            total = make_strategy(spec).total
            if max_trials > server_limit:
                raise SpecError([(("max_trials",), f"a sweep may have at most {server_limit} trials on this "
                                                   f"server, but got {max_trials}")])
            if total <= sweep.total_trials:
                size = make_strategy(spec).size
                whole = f"; its space has {size} configurations, all of them handed out" \
                    if size is not None and size <= max_trials else ""
                raise SpecError([(("max_trials",), f"must be more than the sweep's {sweep.total_trials} trials, "
                                                   f"but got {max_trials}{whole}")])
            if sweep.status == SweepStatus.failed:
                # It runs again with a fresh failure budget: the reason it ended no longer holds.
                sweep.status_reason, sweep.consecutive_failures = None, 0
            sweep.spec, sweep.total_trials, sweep.status = stored, total, status
            if status != SweepStatus.completed:
                sweep.finished_at = None
            self._plans.put(sweep.id, SweepPlan.of(sweep.id, spec, stored, sweep.run_digits))
            return self._summary(sweep)

    def _summary(self, sweep: SweepRow) -> SweepSummary:
        return self._summaries([sweep])[0]

    def _summaries(self, sweeps: list[SweepRow]) -> list[SweepSummary]:
        """Summaries of many sweeps in three statements (plus one per distinct objective), none per sweep."""
        stats = trial_stats(self._session, (sweep.id for sweep in sweeps))
        # A multi-objective sweep has no single best trial: its Pareto front takes that place.
        single = [sweep for sweep in sweeps if not is_multi_objective(sweep)]
        best = best_trials(self._session, single)
        fronts = pareto_fronts(self._session, sweeps)
        failures = first_failures(self._session, (sweep.id for sweep in sweeps if stats[sweep.id].counts[
            TrialState.failed]))
        waiting = self._waiting_for([sweep for sweep in sweeps if _has_work_left(sweep, stats[sweep.id].counts)])
        return [SweepSummary(sweep, stats[sweep.id].counts, best.get(sweep.id), self._space_size(sweep),
                             stats[sweep.id].started_at, fronts.get(sweep.id), failures.get(sweep.id),
                             waiting.get(sweep.id))
                for sweep in sweeps]

    def _waiting_for(self, sweeps: list[SweepRow]) -> dict[int, WorkerWanted]:
        """Of running sweeps with work left, those whose trials no connected worker can run, by id.

        Only sweeps of more than one GPU per trial are judged: any worker runs a one-GPU trial, and a sweep
        created before any worker connected is the ordinary case, not one to flag. One statement, and none
        when no such sweep is on the page.
        """
        multi = [sweep for sweep in sweeps if sweep.gpus_per_trial > 1]
        if not multi:
            return {}
        connected = WorkerRow.last_seen_at >= self._clock() - self._policy.lease
        most = self._session.scalar(select(func.max(func.coalesce(WorkerRow.gpus, 1))).where(connected))
        return {sweep.id: WorkerWanted(sweep.gpus_per_trial, most) for sweep in multi
                if most is None or most < sweep.gpus_per_trial}

    def _space_size(self, sweep: SweepRow) -> int | None:
        # Derived from the spec, never stored: the plan cache parses each sweep's spec once per process.
        try:
            return self._plans.get(sweep).strategy.size
        except SweeperError:
            # The spec no longer parses as a whole (its model's plugin is gone): reads must still answer.
            return stored_space_size(sweep.spec)

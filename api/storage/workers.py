"""Workers: every worker seen, with a state derived from its last call and the trials it holds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import func, select
from sweeper.messages import TrialState

from api.models import TrialRow, WorkerRow
from api.queries import worker_state_is
from api.storage.base import Store


class WorkerState(StrEnum):
    idle = "idle"
    """Seen within the lease TTL, holding no trial."""
    busy = "busy"
    """Seen within the lease TTL, running a trial."""
    lost = "lost"
    """Silent for longer than the lease TTL."""


@dataclass(frozen=True)
class WorkerStatus:
    worker: WorkerRow
    state: WorkerState
    trial_id: int | None
    """The running trial the worker holds, if any (also while it is lost, until the lease is reaped)."""
    sweep_id: int | None = None
    """That trial's sweep."""
    trial_number: int | None = None
    """That trial's number within its sweep, from 1."""



class WorkerStore(Store):
    """The workers seen."""

    def list_workers(self, *, limit: int, offset: int, state: WorkerState | None = None,
                     ) -> tuple[list[WorkerStatus], int]:
        """A page of the workers ever seen (in one state, if given), by id, each with its state now, and how
        many there are."""
        with self._session.begin():
            now = self._clock()
            matching = select(WorkerRow)
            if state is not None:
                matching = matching.where(worker_state_is(state, now - self._policy.lease))
            count = self._session.scalar(select(func.count()).select_from(matching.subquery())) or 0
            workers = list(self._session.scalars(matching.order_by(WorkerRow.id).limit(limit).offset(offset)))
            held: dict[str, tuple[int, int, int]] = {}
            for worker_id, trial_id, sweep_id, index in self._session.execute(
                    select(TrialRow.worker_id, TrialRow.id, TrialRow.sweep_id, TrialRow.index)
                    .where(TrialRow.state == TrialState.running, TrialRow.worker_id.in_([w.id for w in workers]))
                    .order_by(TrialRow.id.desc())):
                held[worker_id] = (trial_id, sweep_id, index + 1)  # descending, so the oldest held trial wins
            statuses = []
            for worker in workers:
                trial_id, sweep_id, number = held.get(worker.id, (None, None, None))
                statuses.append(WorkerStatus(worker, self._worker_state(worker, trial_id, now), trial_id, sweep_id,
                                             number))
            return statuses, count

    def _worker_state(self, worker: WorkerRow, trial_id: int | None, now: datetime) -> WorkerState:
        if worker.last_seen_at + self._policy.lease < now:
            return WorkerState.lost
        return WorkerState.idle if trial_id is None else WorkerState.busy

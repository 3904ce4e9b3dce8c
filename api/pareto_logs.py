"""TensorBoard's view of a multi-objective sweep's Pareto front: a background thread that writes each
completed trial's `pareto_rank` (0 on the front) into the trial's logs, as the front changes.

TensorBoard has no Pareto view of its own; with `pareto_rank` declared as a metric of the sweep's HParams
config (sweeper.hparams_log), the dashboard's table filters to the front (rank 0) and its scatter plot
matrix colours by it. A trial's rank changes as later trials complete, so a pass every few seconds writes
the ranks that changed since the last pass: a new event file per change, at the step of the sweep's count
of completed trials then, which makes it the trial's latest value. Only sweeps that are open, or that ended while this process ran,
are looked at; nothing on the claim path waits for it.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from sweeper import log_location
from sweeper.hparams_log import PARETO_GROUP, PARETO_RANK, write_scalar_file
from sweeper.messages import TrialState

from api.lifecycle import OPEN
from api.models import SweepRow, TrialRow, utcnow
from api.queries import is_multi_objective, objective_table
from api.search.pareto import pareto_ranks

logger = logging.getLogger(__name__)

THREAD_NAME = "sweeper-pareto-logs"
INTERVAL_SECONDS = 5.0


class ParetoLogs:
    """Writes changed Pareto ranks every `interval` seconds from `start()` until `stop()`; `write_once()` is a pass."""

    def __init__(self, sessions: sessionmaker[Session], logdir: str, *, interval: float = INTERVAL_SECONDS):
        self._sessions = sessions
        self._logdir = logdir
        self._interval = interval
        self._since: datetime = utcnow()
        self._seen: dict[int, int] = {}
        """Per sweep: how many completed trials it had at the last pass."""
        self._written: dict[int, dict[int, int]] = {}
        """Per sweep: the rank last written for each trial."""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def write_once(self) -> int:
        """One pass: how many ranks were written."""
        written = 0
        with self._sessions() as session, session.begin():
            sweeps = [sweep for sweep in session.scalars(select(SweepRow).where(
                or_(SweepRow.status.in_(OPEN), SweepRow.finished_at >= self._since))) if is_multi_objective(sweep)]
            counts = dict(session.execute(
                select(TrialRow.sweep_id, func.count())
                .where(TrialRow.sweep_id.in_([sweep.id for sweep in sweeps]), TrialRow.state == TrialState.completed)
                .group_by(TrialRow.sweep_id)).all()) if sweeps else {}
            for sweep in sweeps:
                if counts.get(sweep.id, 0) == self._seen.get(sweep.id):
                    continue
                trials, points, maximize = objective_table(session, sweep)
                ranks = dict(zip((trial_id for trial_id, _ in trials), pareto_ranks(points, maximize)))
                runs = {trial_id: sweep.run_name(trial_id, number) for trial_id, number in trials}
                written += self._write(sweep.id, ranks, runs, step=counts.get(sweep.id, 0))
                self._seen[sweep.id] = counts.get(sweep.id, 0)
        return written

    def _write(self, sweep_id: int, ranks: dict[int, int], runs: dict[int, str], step: int) -> int:
        before = self._written.setdefault(sweep_id, {})
        changed = 0
        for trial_id, rank in ranks.items():
            if before.get(trial_id) == rank:
                continue
            folder = log_location.join(log_location.trial_dir(self._logdir, sweep_id, runs[trial_id]), PARETO_GROUP)
            write_scalar_file(folder, PARETO_RANK, float(rank), step, suffix=PARETO_RANK)
            before[trial_id] = rank
            changed += 1
        return changed

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.write_once()
            except Exception:
                # A busy database or a full disk must not end the thread: the next pass writes what is missing.
                logger.exception("writing Pareto ranks to the logs failed; retrying in %.0f s", self._interval)

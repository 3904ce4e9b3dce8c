"""The lease reaper: a background thread that requeues (or fails) the trials of lost workers.

Claims reap expired leases too, but when no worker is claiming (the last trials of a sweep, a fleet
that is all busy) nobody would notice a lost worker; the reaper does, every few seconds. Each pass is
one repository transaction, so several server processes on one database may all run a reaper: a lease
is reaped by exactly one of them (BEGIN IMMEDIATE on SQLite, SKIP LOCKED elsewhere).
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from api.storage import LeasePolicy, PlanCache, Repository

logger = logging.getLogger(__name__)

THREAD_NAME = "sweeper-lease-reaper"


class LeaseReaper:
    """Reaps expired leases every `interval` seconds from `start()` until `stop()`."""

    def __init__(self, sessions: sessionmaker[Session], policy: LeasePolicy, plans: PlanCache, *, interval: float):
        if interval <= 0:
            raise ValueError(f"the reaper's interval must be > 0 seconds, but got {interval}")
        self._sessions = sessions
        self._policy = policy
        self._plans = plans
        self._interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the lease reaper was already started")
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the pass in progress, if any (a pass is one short transaction)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("the lease reaper did not stop within %.0f s", timeout)

    def reap_once(self) -> int:
        """One pass: how many expired leases were reaped."""
        with self._sessions() as session:
            return Repository(session, self._policy, self._plans).reap_expired_leases()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                reaped = self.reap_once()
            except Exception:
                # A busy or briefly unreachable database must not end the thread: the next pass retries.
                logger.exception("reaping expired leases failed; retrying in %.1f s", self._interval)
                continue
            if reaped:
                logger.info("reaped %d expired lease(s)", reaped)

"""The claim desk: workers' claims and completions, run in batches, one transaction per batch.

With dozens of workers, claims and completions arrive together, and each one alone costs more in its
transaction (a session, a pooled connection, BEGIN IMMEDIATE, the commit, a thread hand-off) than in its
few statements. The desk queues them and runs whatever has queued up in one thread, in one transaction,
in arrival order, each through the same `Repository` method a lone request would call; then commits
once and answers them all. An answer is sent only after its batch committed, so a worker is never told
about a claim that a crash could undo.

If any call in a batch raises (a late worker's 409, a database error), the whole batch is rolled back
and each of its calls runs again alone, in a transaction of its own: the calls that were fine succeed,
and the failing one fails exactly as it would have without batching. A batch also ends early, after
BATCH_SECONDS of calls (claims that sample a configuration are slow), so answers are not held back long.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Request

from sqlalchemy.orm import Session, sessionmaker

from api.storage import LeasePolicy, PlanCache, Repository

logger = logging.getLogger(__name__)

T = TypeVar("T")

THREAD_NAME = "sweeper-claim-desk"
MAX_BATCH = 128
"""Calls per transaction at most: a batch holds the database's write lock while it runs."""
BATCH_SECONDS = 0.05
"""A batch commits once its calls have run this long, and the calls left wait for the next: a claim on an
adaptive sweep samples a configuration (tens of milliseconds), and without a limit 64 such claims would
all be answered only when the last was sampled, while the write lock kept every epoch report waiting."""


@dataclass(slots=True)
class _Call(Generic[T]):
    operation: Callable[[Repository], T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop


class ClaimDesk:
    """Runs repository calls in batches on one thread; `await desk.run(lambda repository: ...)` from the app."""

    def __init__(self, sessions: sessionmaker[Session], policy: LeasePolicy, plans: PlanCache):
        self._sessions = sessions
        self._policy = policy
        self._plans = plans
        self._queue: list[_Call[Any]] = []
        self._ready = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    async def run(self, operation: Callable[[Repository], T]) -> T:
        """`operation(repository)` in the next batch; its result, or what it raised when run alone."""
        loop = asyncio.get_running_loop()
        call = _Call(operation, loop.create_future(), loop)
        with self._ready:
            if self._closed:
                raise RuntimeError("the claim desk is closed: the server is shutting down")
            if self._thread is None:
                # Started on first use: an app used without its lifespan (a test client) still answers.
                self._thread = threading.Thread(target=self._serve, name=THREAD_NAME, daemon=True)
                self._thread.start()
            self._queue.append(call)
            self._ready.notify()
        return await call.future

    def close(self, timeout: float = 10.0) -> None:
        """Answer what is queued, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("the claim desk did not stop within %.0f s", timeout)

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Call[Any]]) -> None:
        results: list[Any] = []
        try:
            with self._sessions() as session:
                repository = Repository(session, self._policy, self._plans)
                with repository.batch():
                    started = time.monotonic()
                    for call in batch:
                        results.append(call.operation(repository))
                        if time.monotonic() - started >= BATCH_SECONDS:
                            break
        except Exception:
            # Rolled back: nothing of this batch was written. Each call that ran, and the one that raised,
            # again alone; the rest go back to the queue.
            self._requeue(batch[len(results) + 1:])
            for call in batch[:len(results) + 1]:
                self._run_alone(call)
            return
        self._requeue(batch[len(results):])
        for call, result in zip(batch, results):
            _answer(call, result, None)

    def _requeue(self, calls: list[_Call[Any]]) -> None:
        """Calls a batch did not get to, first in line for the next one."""
        if calls:
            with self._ready:
                self._queue = calls + self._queue

    def _run_alone(self, call: _Call[Any]) -> None:
        try:
            with self._sessions() as session:
                result = call.operation(Repository(session, self._policy, self._plans))
        except Exception as error:
            _answer(call, None, error)
        else:
            _answer(call, result, None)


def _answer(call: _Call[Any], result: Any, error: BaseException | None) -> None:
    def settle() -> None:
        if call.future.cancelled():  # the client went away; a claim it missed is its own again when it asks
            return
        if error is not None:
            call.future.set_exception(error)
        else:
            call.future.set_result(result)

    try:
        call.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop has closed: nobody waits for this answer any more
        pass


async def get_desk(request: Request) -> ClaimDesk:
    desk: ClaimDesk = request.app.state.desk
    return desk


DeskDep = Annotated[ClaimDesk, Depends(get_desk)]

"""The claim desk batches the worker protocol's claims and completions, one transaction per batch, and is
still exact: every worker gets its own trial, a refused call fails alone, a failed commit loses nothing,
and every worker a batch names is recorded as seen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from api_testing import grid_spec
from sqlalchemy import Engine, event, select
from sqlalchemy.exc import OperationalError

from api.db import make_engine, make_sessions
from api.claims.desk import BATCH_SECONDS, ClaimDesk
from api.migrate import upgrade
from api.models import TrialRow, WorkerRow
from api.storage import LeaseConflictError, LeasePolicy, PlanCache, Repository
from sweeper import parse_spec
from sweeper.messages import ClaimRequest, CompleteReport, TrialState

POLICY = LeasePolicy(lease=timedelta(seconds=60), heartbeat=timedelta(seconds=10))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def desk(engine: Engine) -> Iterator[ClaimDesk]:
    desk = ClaimDesk(make_sessions(engine), POLICY, PlanCache())
    yield desk
    desk.close()


def create_sweep(engine: Engine, trials: int) -> int:
    with make_sessions(engine)() as session:
        summary = Repository(session, POLICY, PlanCache()).create_sweep(parse_spec(grid_spec(values=trials)),
                                                                        max_trials=trials)
    return summary.sweep.id


def commits(engine: Engine) -> list[int]:
    """A list that grows by one at every commit on the engine."""
    seen: list[int] = []
    event.listen(engine, "commit", lambda connection: seen.append(1))
    return seen


def claim(worker: str, host: str = "box", gpu: str | None = None) -> Any:
    request = ClaimRequest(worker_id=worker, host=host, gpu=gpu)
    return lambda repository: repository.claim(request)


def complete(trial_id: int, worker: str, lease_token: int = 1) -> Any:
    report = CompleteReport(worker_id=worker, lease_token=lease_token, metrics={"val_accuracy": 0.5})
    return lambda repository: repository.complete(trial_id, report)


async def at_once(desk: ClaimDesk, *operations: Any) -> list[Any]:
    """Every operation submitted together; each one's result, or the exception it raised."""
    return await asyncio.gather(*(desk.run(operation) for operation in operations), return_exceptions=True)


def test_concurrent_claims_share_transactions_and_each_worker_gets_its_own_trial(engine: Engine, desk: ClaimDesk):
    create_sweep(engine, trials=64)
    committed = commits(engine)

    claimed = asyncio.run(at_once(desk, *(claim(f"w{number}") for number in range(64))))

    trials = [result.trial for result in claimed]
    assert sorted(trial.index for trial in trials) == list(range(64))
    assert {trial.worker_id for trial in trials} == {f"w{number}" for number in range(64)}
    assert len(committed) < 64 / 4, f"64 claims took {len(committed)} transactions: they were not batched"


def test_slow_calls_are_committed_and_answered_in_several_batches_not_all_at_the_end(engine: Engine,
                                                                                    desk: ClaimDesk):
    # As claims that sample a configuration are: each takes a share of the batch's time budget.
    create_sweep(engine, trials=8)
    committed = commits(engine)

    def slow_claim(worker: str) -> Any:
        def operation(repository: Repository) -> Any:
            time.sleep(BATCH_SECONDS / 2)
            return repository.claim(ClaimRequest(worker_id=worker, host="box"))
        return operation

    answered: list[tuple[int, float]] = []

    async def claim_all() -> None:
        async def one(number: int) -> None:
            await desk.run(slow_claim(f"w{number}"))
            answered.append((len(committed), time.monotonic()))
        await asyncio.gather(*(one(number) for number in range(8)))

    asyncio.run(claim_all())

    assert len(committed) >= 4  # at most two calls per batch, then the budget is spent
    assert answered[0][0] < len(committed), "the first claims were answered only after the last batch committed"


def test_a_refused_call_fails_alone_and_the_rest_of_its_batch_is_kept(engine: Engine, desk: ClaimDesk):
    create_sweep(engine, trials=4)
    first, second = asyncio.run(at_once(desk, claim("w1"), claim("w2")))

    results = asyncio.run(at_once(desk, complete(first.trial.id, "w1"),
                                  complete(second.trial.id, "intruder"),  # does not hold the lease: 409
                                  claim("w3")))

    assert results[0].state == TrialState.completed
    assert isinstance(results[1], LeaseConflictError)
    assert results[2].trial.index == 2
    with make_sessions(engine)() as session:
        states = dict(session.execute(select(TrialRow.worker_id, TrialRow.state)).all())
    assert states == {"w1": TrialState.completed, "w2": TrialState.running, "w3": TrialState.running}


def test_a_batch_whose_commit_fails_is_rolled_back_and_each_call_runs_again_alone(engine: Engine, desk: ClaimDesk):
    create_sweep(engine, trials=8)
    failures = iter([True])

    @event.listens_for(engine, "commit")
    def fail_the_first_commit(connection: Any) -> None:
        if next(failures, False):
            raise OperationalError("COMMIT", None, Exception("disk I/O error"))

    claimed = asyncio.run(at_once(desk, *(claim(f"w{number}") for number in range(8))))

    assert sorted(result.trial.index for result in claimed) == list(range(8))
    with make_sessions(engine)() as session:
        rows = session.execute(select(TrialRow.index, TrialRow.attempts)).all()
    assert sorted(rows) == [(index, 1) for index in range(8)], "a trial of the failed batch was kept or claimed twice"


def test_every_worker_a_batch_names_is_recorded_as_seen_with_where_it_runs(engine: Engine, desk: ClaimDesk):
    create_sweep(engine, trials=4)
    [held] = asyncio.run(at_once(desk, claim("known", host="old-host")))

    asyncio.run(at_once(desk, complete(held.trial.id, "known"), claim("known", host="new-host", gpu="1"),
                        claim("new", host="gpu-box", gpu="0")))

    with make_sessions(engine)() as session:
        workers = {row.id: (row.host, row.gpu, row.first_seen_at <= row.last_seen_at)
                   for row in session.scalars(select(WorkerRow))}
    assert workers == {"known": ("new-host", "1", True), "new": ("gpu-box", "0", True)}


def test_closing_answers_what_is_queued_then_refuses_new_calls(engine: Engine, desk: ClaimDesk):
    create_sweep(engine, trials=2)

    async def claim_then_close() -> tuple[Any, ...]:
        pending = asyncio.ensure_future(desk.run(claim("w1")))
        await asyncio.sleep(0)  # queued
        await asyncio.get_running_loop().run_in_executor(None, desk.close)
        return await pending, await asyncio.gather(desk.run(claim("w2")), return_exceptions=True)

    claimed, (refused,) = asyncio.run(claim_then_close())

    assert claimed.trial.worker_id == "w1"
    assert isinstance(refused, RuntimeError) and "closed" in str(refused)

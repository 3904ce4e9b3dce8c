"""Lists: paging and state filters on sweeps, trials and workers; trials sorted by index, objective, a metric
or an hparam; a sweep's best trial and its objective curve; and listing without a query per sweep."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from api_testing import API, Worker, control, create_sweep, get_sweep, grid_spec, random_spec
from fastapi.testclient import TestClient
from sqlalchemy import event

from api.models import SweepRow, TrialRow, utcnow
from sweeper import make_strategy, parse_spec
from sweeper.messages import SweepStatus, TrialState


def _trials(client: TestClient, sweep_id: int, **params: Any) -> dict[str, Any]:
    response = client.get(f"{API}/sweeps/{sweep_id}/trials", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _run(client: TestClient, worker: Worker, **metrics: float) -> int:
    """Claim the next trial and complete it with `metrics`; its id."""
    trial_id = worker.claim_id()
    assert worker.complete(trial_id, **metrics).status_code == 200
    return trial_id


@pytest.fixture
def scored(client: TestClient) -> tuple[int, list[int]]:
    """A grid sweep (maximize val_accuracy) over units 1..5: three completed, one failed, one running."""
    sweep = create_sweep(client, grid_spec(values=5))
    worker = Worker(client, "w1")
    ids = [_run(client, worker, val_accuracy=score, loss=1 - score) for score in (0.7, 0.9, 0.8)]
    failed = worker.claim_id()
    worker.fail(failed, error="boom")
    running = worker.claim_id()
    return sweep["id"], [*ids, failed, running]


# -- sweeps ----------------------------------------------------------------------------------------

def test_sweeps_filtered_by_state_are_counted_in_that_state_only(client: TestClient):
    ids = [create_sweep(client, grid_spec(name=f"s{i}"))["id"] for i in range(5)]
    control(client, ids[1], "pause")
    control(client, ids[3], "pause")
    control(client, ids[4], "cancel")

    paused = client.get(f"{API}/sweeps", params={"state": "paused", "limit": 1}).json()
    running = client.get(f"{API}/sweeps", params={"state": "running"}).json()

    assert paused["count"] == 2 and [sweep["id"] for sweep in paused["data"]] == [ids[3]]
    assert [sweep["id"] for sweep in running["data"]] == [ids[2], ids[0]]
    assert client.get(f"{API}/sweeps", params={"state": "failed"}).json() == {"data": [], "count": 0}


def test_an_unknown_sweep_state_is_422_at_the_query_parameter(client: TestClient):
    response = client.get(f"{API}/sweeps", params={"state": "sleeping"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "state"]


def test_a_sweep_has_started_once_its_first_trial_has(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=2))
    assert sweep["started_at"] is None

    first = Worker(client, "w1").claim_id()
    Worker(client, "w2").claim_id()

    read = get_sweep(client, sweep["id"])
    trial = client.get(f"{API}/trials/{first}").json()
    assert read["started_at"] == trial["started_at"]
    assert client.get(f"{API}/sweeps").json()["data"][0]["started_at"] == read["started_at"]


def test_listed_sweeps_carry_their_own_counts_and_best_trial(client: TestClient):
    maximize = create_sweep(client, grid_spec(name="max", values=3))
    minimize = create_sweep(client, random_spec(name="min", max_trials=3))  # minimizes val_loss
    empty = create_sweep(client, grid_spec(name="empty"))
    control(client, maximize["id"], "pause")  # only the second sweep's trials are handed out next
    worker = Worker(client, "w1")
    low = _run(client, worker, val_loss=0.2)
    _run(client, worker, val_loss=0.4)
    control(client, maximize["id"], "resume")
    control(client, minimize["id"], "pause")
    _run(client, worker, val_accuracy=0.6)
    high = _run(client, worker, val_accuracy=0.9)

    listed = {sweep["name"]: sweep for sweep in client.get(f"{API}/sweeps").json()["data"]}

    assert listed["max"]["best_trial"]["id"] == high and listed["max"]["trial_counts"]["completed"] == 2
    assert listed["min"]["best_trial"]["id"] == low and listed["min"]["trial_counts"]["completed"] == 2
    assert listed["empty"]["best_trial"] is None and listed["empty"]["id"] == empty["id"]
    for sweep in listed.values():
        assert sweep == get_sweep(client, sweep["id"])


def test_a_sweep_whose_model_is_no_longer_registered_still_lists_with_its_size(client: TestClient):
    # As after a restart without the plugin that registered its model: reads must not need the registries.
    spec = parse_spec(grid_spec(name="orphan", values=4)).to_json() | {"model": "plugin-model-gone"}
    context = client.app.state.context  # type: ignore[attr-defined]
    with context.sessions() as session, session.begin():
        session.add(SweepRow(name="orphan", status=SweepStatus.running, spec=spec, total_trials=4, next_index=0,
                             created_at=utcnow()))

    listed = client.get(f"{API}/sweeps")

    assert listed.status_code == 200, listed.text
    assert listed.json()["data"][0]["space_size"] == 4
    assert get_sweep(client, listed.json()["data"][0]["id"])["space_size"] == 4


# -- trials ----------------------------------------------------------------------------------------

def test_trials_filtered_by_state_and_paged(client: TestClient, scored: tuple[int, list[int]]):
    sweep_id, ids = scored

    completed = _trials(client, sweep_id, state="completed", limit=2, offset=1)

    assert completed["count"] == 3
    assert [trial["id"] for trial in completed["data"]] == ids[1:3]
    assert [t["id"] for t in _trials(client, sweep_id, state="failed")["data"]] == [ids[3]]
    assert _trials(client, sweep_id, state="pending") == {"data": [], "count": 0}


def test_sorting_by_objective_puts_the_best_first_and_trials_without_a_value_last(
        client: TestClient, scored: tuple[int, list[int]]):
    sweep_id, ids = scored

    best_first = [trial["id"] for trial in _trials(client, sweep_id, sort="objective")["data"]]
    worst_first = [trial["id"] for trial in _trials(client, sweep_id, sort="objective", order="asc")["data"]]

    assert best_first == [ids[1], ids[2], ids[0], ids[3], ids[4]]  # 0.9, 0.8, 0.7, then by index
    assert worst_first == [ids[0], ids[2], ids[1], ids[3], ids[4]]


def test_a_minimize_objective_sorts_the_smallest_first(client: TestClient):
    sweep = create_sweep(client, random_spec(max_trials=3))
    worker = Worker(client, "w1")
    ids = [_run(client, worker, val_loss=loss) for loss in (0.5, 0.1, 0.3)]

    assert [t["id"] for t in _trials(client, sweep["id"], sort="objective")["data"]] == [ids[1], ids[2], ids[0]]


def test_sorting_by_a_metric_or_an_hparam_is_ascending_unless_asked(client: TestClient,
                                                                     scored: tuple[int, list[int]]):
    sweep_id, ids = scored

    by_loss = [t["id"] for t in _trials(client, sweep_id, sort="metrics.loss")["data"]]
    by_units = [t["hparams"]["units"] for t in _trials(client, sweep_id, sort="hparams.units", order="desc")["data"]]

    assert by_loss == [ids[1], ids[2], ids[0], ids[3], ids[4]]  # 0.1, 0.2, 0.3, then those without a loss
    assert by_units == [5, 4, 3, 2, 1]
    assert [t["id"] for t in _trials(client, sweep_id, order="desc")["data"]] == ids[::-1]


def test_string_hparams_sort_as_strings_and_numbers_as_numbers(client: TestClient):
    spec = grid_spec(values=1)
    spec["hparams"] = {"units": {"type": "discrete", "values": [9, 10, 100]},
                       "optimizer": {"type": "discrete", "values": ["sgd", "adam"]}}
    sweep = create_sweep(client, spec)
    for number in range(6):
        Worker(client, f"w{number}").claim_id()

    units = [t["hparams"]["units"] for t in _trials(client, sweep["id"], sort="hparams.units")["data"]]
    optimizers = [t["hparams"]["optimizer"] for t in _trials(client, sweep["id"], sort="hparams.optimizer")["data"]]

    assert units == [9, 9, 10, 10, 100, 100]  # as text, "100" would come before "9"
    assert optimizers == ["adam"] * 3 + ["sgd"] * 3


@pytest.mark.parametrize("sort, message", [
    ("hparams.momentum", "sweep 1 has no hparam 'momentum'; its hparams: units, batch_size"),
    ("speed", "should match pattern"),
    ('metrics.val"loss', "should match pattern"),
])
def test_a_sort_the_sweep_cannot_have_is_422_at_the_sort_parameter(client: TestClient, sort: str, message: str):
    create_sweep(client, grid_spec())

    response = client.get(f"{API}/sweeps/1/trials", params={"sort": sort})

    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["query", "sort"] and message in problem["msg"]


# -- best trial and objective ----------------------------------------------------------------------

def test_the_best_trial_is_404_until_a_trial_completes_then_the_best_one(client: TestClient,
                                                                         scored: tuple[int, list[int]]):
    empty = create_sweep(client, grid_spec(name="empty"))

    none_yet = client.get(f"{API}/sweeps/{empty['id']}/best")
    best = client.get(f"{API}/sweeps/{scored[0]}/best")

    assert none_yet.status_code == 404
    assert none_yet.json() == {"detail": f"sweep {empty['id']} has no completed trial with a value for its "
                                         f"objective yet"}
    assert best.status_code == 200 and best.json()["id"] == scored[1][1]
    assert best.json() == get_sweep(client, scored[0])["best_trial"]
    assert client.get(f"{API}/sweeps/99/best").json() == {"detail": "sweep 99 not found"}


def test_a_tie_for_the_best_goes_to_the_earliest_trial(client: TestClient):
    sweep = create_sweep(client, grid_spec(values=3))
    worker = Worker(client, "w1")
    ids = [_run(client, worker, val_accuracy=score) for score in (0.5, 0.8, 0.8)]

    assert client.get(f"{API}/sweeps/{sweep['id']}/best").json()["id"] == ids[1]


def test_the_objective_curve_has_every_completed_trial_in_index_order(client: TestClient,
                                                                      scored: tuple[int, list[int]]):
    sweep_id, ids = scored
    Worker(client, "w1").complete(ids[4], loss=0.5)  # completed, but without a val_accuracy

    curve = client.get(f"{API}/sweeps/{sweep_id}/objective").json()

    assert curve == {"metric": "val_accuracy", "goal": "maximize", "points": [
        {"trial_id": ids[0], "number": 1, "index": 0, "value": 0.7},
        {"trial_id": ids[1], "number": 2, "index": 1, "value": 0.9},
        {"trial_id": ids[2], "number": 3, "index": 2, "value": 0.8},
        {"trial_id": ids[4], "number": 5, "index": 4, "value": None}]}
    assert client.get(f"{API}/sweeps/42/objective").status_code == 404


def test_a_trials_history_carries_each_epochs_learning_rate(client: TestClient):
    create_sweep(client, grid_spec())
    worker = Worker(client, "w1")
    trial_id = worker.claim_id()
    worker.report(trial_id, 0, loss=1.0, learning_rate=0.01)
    worker.report(trial_id, 1, loss=0.5, learning_rate=0.005)

    history = client.get(f"{API}/trials/{trial_id}").json()["history"]

    assert [entry["metrics"]["learning_rate"] for entry in history] == [0.01, 0.005]


# -- workers ---------------------------------------------------------------------------------------

def test_workers_filtered_by_state(client_with: Callable[..., TestClient]):
    client = client_with(lease_seconds=1.0, reap_interval_seconds=3600)
    create_sweep(client, grid_spec(values=1))
    Worker(client, "silent").claim_id()
    time.sleep(1.2)
    Worker(client, "busy").claim_id()  # gets the silent worker's trial, requeued
    Worker(client, "idle").claim()  # nothing left to claim

    def named(state: str) -> list[str]:
        page = client.get(f"{API}/workers", params={"state": state}).json()
        assert page["count"] == len(page["data"])
        return [worker["id"] for worker in page["data"]]

    assert (named("lost"), named("busy"), named("idle")) == (["silent"], ["busy"], ["idle"])
    assert client.get(f"{API}/workers", params={"state": "asleep"}).status_code == 422


# -- cost ------------------------------------------------------------------------------------------

@contextmanager
def counting_statements(client: TestClient) -> Iterator[list[str]]:
    """The SQL statements the app's engine runs inside the block."""
    engine = client.app.state.context.engine  # type: ignore[attr-defined]
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _insert_sweeps(client: TestClient, sweeps: int, trials_each: int) -> None:
    """Sweeps with completed trials, written straight to the database (the API would take minutes)."""
    context = client.app.state.context  # type: ignore[attr-defined]
    specs = [parse_spec(grid_spec(name="grid", values=5)), parse_spec(random_spec(name="random", max_trials=20))]
    with context.sessions() as session, session.begin():
        for number in range(sweeps):
            spec = specs[number % 2]
            sweep = SweepRow(name=f"{spec.name}-{number}", status=SweepStatus.running, spec=spec.to_json(),
                             total_trials=make_strategy(spec).total, next_index=trials_each, created_at=utcnow())
            session.add(sweep)
            session.flush()
            session.add_all(TrialRow(sweep_id=sweep.id, index=index, state=TrialState.completed, attempts=1,
                                     hparams=make_strategy(spec).config_at(index), created_at=utcnow(),
                                     started_at=utcnow(), finished_at=utcnow(),
                                     metrics={"val_accuracy": index / 10, "val_loss": 1 - index / 10})
                            for index in range(trials_each))


def test_listing_sweeps_costs_the_same_statements_for_3_sweeps_as_for_60(
        client: TestClient, client_with: Callable[..., TestClient], other_database_url: str):
    _insert_sweeps(client, 3, trials_each=2)
    with counting_statements(client) as few:
        assert len(client.get(f"{API}/sweeps").json()["data"]) == 3
    other = client_with(database_url=other_database_url)
    _insert_sweeps(other, 60, trials_each=2)
    with counting_statements(other) as many:
        assert len(other.get(f"{API}/sweeps").json()["data"]) == 60

    # Two objectives on each page (grid maximizes val_accuracy, random minimizes val_loss): one best-trial
    # statement for each, plus the count, the page, and the trial counts.
    assert len(many) == len(few)


def test_a_page_of_sweeps_among_1000_answers_within_200_ms(client: TestClient):
    _insert_sweeps(client, 1000, trials_each=5)
    client.get(f"{API}/sweeps", params={"limit": 50})  # the first read parses the page's specs once

    timings = []
    for offset in (0, 50, 500, 950):
        started = time.perf_counter()
        page = client.get(f"{API}/sweeps", params={"limit": 50, "offset": offset}).json()
        timings.append(time.perf_counter() - started)
        assert page["count"] == 1000 and len(page["data"]) == 50
        assert all(sweep["best_trial"] is not None for sweep in page["data"])

    assert sorted(timings)[len(timings) // 2] < 0.2, timings

"""The real server: uvicorn in a thread on a free port, many workers claiming at once, a busy database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
import sqlalchemy
from api_testing import API, Worker, create_sweep, grid_spec, random_spec
from claiming_workers import ClaimRecord
from fastapi.testclient import TestClient

from api import db
from api.app import create_app
from api.server import RunningServer, start_in_thread
from api.settings import Settings
from sweeper import make_strategy, parse_spec


def test_start_in_thread_on_port_0_serves_on_the_port_it_reports(server: RunningServer):
    assert not server.url.endswith(":0")
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}


def test_stop_releases_the_port(tmp_path: Path):
    running = start_in_thread(Settings(port=0, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
                                       logdir=tmp_path / "runs"))
    running.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{running.url}/healthz")


def test_start_in_thread_fails_loudly_when_the_port_is_taken(server: RunningServer, tmp_path: Path):
    taken = int(server.url.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match="failed to start"):
        start_in_thread(Settings(port=taken, database_url=f"sqlite:///{tmp_path / 'other.db'}", logdir=tmp_path))


def test_settings_come_from_sweeper_environment_variables(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SWEEPER_LEASE_SECONDS", "5")
    monkeypatch.setenv("SWEEPER_HEARTBEAT_SECONDS", "2")
    monkeypatch.setenv("SWEEPER_REAP_INTERVAL_SECONDS", "0.5")
    settings = Settings()
    assert (settings.lease_seconds, settings.heartbeat_interval, settings.reap_interval_seconds, settings.host,
            settings.port) == (5.0, 2.0, 0.5, "127.0.0.1", 8000)


def test_the_heartbeat_defaults_to_a_sixth_of_the_lease_and_at_most_10_seconds():
    assert Settings().heartbeat_interval == 10.0
    assert Settings(lease_seconds=600).heartbeat_interval == 10.0
    assert Settings(lease_seconds=3).heartbeat_interval == 0.5
    assert Settings(lease_seconds=3, heartbeat_seconds=1.5).heartbeat_interval == 1.5


def test_a_lease_shorter_than_two_heartbeats_is_refused_naming_both():
    with pytest.raises(ValueError, match=r"lease_seconds \(15\) must last at least 2 heartbeats \(20 s with "
                                         r"heartbeat_seconds 10\)"):
        Settings(lease_seconds=15, heartbeat_seconds=10)


@pytest.mark.parametrize("field, value", [("lease_seconds", 0), ("heartbeat_seconds", 0), ("reap_interval_seconds", 0),
                                          ("port", 70_000), ("database_url", "not a url")])
def test_unsafe_settings_fail_fast(field: str, value: object):
    with pytest.raises(ValueError, match=field):
        Settings(**{field: value})


def test_many_workers_claiming_at_once_get_every_trial_exactly_once(server: RunningServer):
    with httpx.Client(base_url=server.url + API, timeout=60) as setup:
        grid = setup.post("/sweeps", json=grid_spec(name="grid40", values=40)).json()
        small = setup.post("/sweeps", json=random_spec(name="random7", max_trials=7)).json()
    record = ClaimRecord()
    record.run([server.url], workers=16, timeout=120, report_epoch=True)

    assert record.errors == []
    claims, configs = record.claims, record.configs
    assert len(claims) == 47 and set(claims.values()) == {1}
    specs = {grid["id"]: grid_spec(name="grid40", values=40), small["id"]: random_spec(name="random7", max_trials=7)}
    for sweep_id, spec in specs.items():
        strategy = make_strategy(parse_spec(spec))
        final = httpx.get(f"{server.url}{API}/sweeps/{sweep_id}").json()
        trials = httpx.get(f"{server.url}{API}/sweeps/{sweep_id}/trials").json()["data"]
        assert final["status"] == "completed"
        assert final["trial_counts"]["completed"] == strategy.total
        assert [trial["hparams"] for trial in trials] == [strategy.config_at(i) for i in range(strategy.total)]
        assert all(configs[trial["id"]] == (sweep_id, trial["hparams"]) for trial in trials)


@pytest.mark.sqlite_only  # holds SQLite's own write lock from outside the server
def test_a_database_locked_past_the_busy_timeout_answers_503_and_changes_nothing(
        settings: Settings, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 50)
    with TestClient(create_app(settings)) as client:
        sweep = create_sweep(client, grid_spec())
        blocker = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            answer = client.post(f"{API}/trials/claim", json={"worker_id": "w", "host": "h"})
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.json() == {"detail": "the database is busy; retry the request"}
        assert client.get(f"{API}/sweeps/{sweep['id']}/trials").json()["count"] == 0
        assert Worker(client, "w").claim() is not None


def test_a_request_that_finds_every_database_connection_busy_past_the_pool_timeout_answers_503(
        settings: Settings, monkeypatch: pytest.MonkeyPatch):
    # What a server overloaded by its fleet does: heartbeats queue for the connection pool, and one that
    # waits past the pool's timeout has changed nothing, so the worker may send it again.
    engines = []

    def small_pool_engine(url, **options):
        engine = sqlalchemy.create_engine(url, **options, pool_size=2, max_overflow=0, pool_timeout=0.2)
        engines.append(engine)
        return engine

    monkeypatch.setattr(db, "create_engine", small_pool_engine)
    with TestClient(create_app(settings)) as client:
        create_sweep(client, grid_spec())
        worker = Worker(client, "w")
        trial_id = worker.claim_id()
        held = []
        try:
            while True:
                held.append(engines[0].connect())
        except sqlalchemy.exc.TimeoutError:
            pass
        try:
            answer = worker.heartbeat(trial_id)
        finally:
            for connection in held:
                connection.close()
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.json() == {"detail": "the database is busy; retry the request"}
        assert worker.heartbeat(trial_id).status_code == 200


@pytest.mark.parametrize("sqlstate", ["40P01", "40001"])  # deadlock detected; could not serialize access
def test_a_transaction_postgresql_aborted_to_break_a_deadlock_answers_503(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, sqlstate: str):
    # Seen with two servers and 1,000 simulated workers (bench/fleet.py): PostgreSQL aborts one of the
    # transactions it finds deadlocked; that one changed nothing, and the worker may send it again.
    from api.storage import TrialLeases

    class Aborted(Exception):
        pass

    aborted = Aborted("deadlock detected")
    aborted.sqlstate = sqlstate  # type: ignore[attr-defined]  (as psycopg's errors carry it)

    def deadlocked(self, trial_id, request):
        raise sqlalchemy.exc.OperationalError("SELECT ... FOR UPDATE OF trials, sweeps", {}, aborted)

    with TestClient(create_app(settings)) as client:
        create_sweep(client, grid_spec())
        worker = Worker(client, "w")
        trial_id = worker.claim_id()
        with monkeypatch.context() as patch:
            patch.setattr(TrialLeases, "heartbeat", deadlocked)
            answer = worker.heartbeat(trial_id)
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.json() == {"detail": "the database is busy; retry the request"}
        assert worker.heartbeat(trial_id).status_code == 200


def test_serve_freezes_the_built_app_out_of_garbage_collection_before_serving(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch):
    # A full collection that walks the whole app stalls every request for 50 ms or more under a fleet.
    import gc
    import sys

    import uvicorn

    from api import server

    frozen_when_serving: list[int] = []
    monkeypatch.setattr(sys, "setswitchinterval", lambda seconds: None)  # the test process keeps its own
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: frozen_when_serving.append(gc.get_freeze_count()))
    gc.unfreeze()
    try:
        server.serve(Settings(port=0, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", logdir=tmp_path / "runs"))
    finally:
        gc.unfreeze()
    assert frozen_when_serving and frozen_when_serving[0] > 10_000


def test_an_idle_connection_stays_open_longer_than_a_heartbeat_so_each_worker_keeps_one(tmp_path: Path):
    # uvicorn's default closes it after 5 s: with heartbeats every 10 s, nearly every call of every
    # worker would open a new connection, and some would race the server's close.
    from api.server import _config

    for heartbeat in (1.0, 10.0, 45.0):
        settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", logdir=tmp_path / "runs",
                            lease_seconds=6 * heartbeat, heartbeat_seconds=heartbeat)
        for embedded in (True, False):
            assert _config(settings, embedded=embedded).timeout_keep_alive > heartbeat

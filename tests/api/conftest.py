"""Fixtures for the API tests: apps on a real SQLite file in tmp_path, and on a PostgreSQL schema of their own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.server import RunningServer, start_in_thread
from api.settings import Settings
from postgres_testing import isolated_schema


BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test on the app's `settings` runs on SQLite and on PostgreSQL, unless marked `sqlite_only`
    (it reaches into the SQLite file itself)."""
    if "database_backend" in metafunc.fixturenames:
        sqlite_only = metafunc.definition.get_closest_marker("sqlite_only") is not None
        metafunc.parametrize("database_backend", BACKENDS[:1] if sqlite_only else BACKENDS, indirect=True)


@pytest.fixture
def database_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@contextmanager
def _fresh_database(backend: str, sqlite_file: Path) -> Iterator[str]:
    """A fresh database: a SQLite file, or a PostgreSQL schema of its own (dropped after)."""
    if backend == "sqlite":
        yield f"sqlite:///{sqlite_file}"
        return
    with isolated_schema() as url:
        yield url


@pytest.fixture
def database_url(database_backend: str, tmp_path: Path) -> Iterator[str]:
    with _fresh_database(database_backend, tmp_path / "sweeper.db") as url:
        yield url


@pytest.fixture
def other_database_url(database_backend: str, tmp_path: Path) -> Iterator[str]:
    """A second fresh database on the same backend, for a test that compares two apps."""
    with _fresh_database(database_backend, tmp_path / "other.db") as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(database_url=database_url, logdir=tmp_path / "runs")


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient]]:
    """Clients for apps built from given settings; each is shut down (engine disposed) at teardown."""
    clients: list[TestClient] = []

    def make(settings: Settings) -> TestClient:
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def client(settings: Settings, make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(settings)


@pytest.fixture
def client_with(settings: Settings, make_client: Callable[..., TestClient]) -> Callable[..., TestClient]:
    """A client for an app whose settings differ from `settings` by the given fields (validated, unlike model_copy)."""

    def make(**overrides: object) -> TestClient:
        return make_client(Settings(**{**settings.model_dump(), **overrides}))

    return make


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Real uvicorn servers in threads on a SQLite file in tmp_path (port 0 unless given), with settings
    overridden by the given fields; all are stopped at teardown."""
    running: list[RunningServer] = []

    def start(**overrides: object) -> RunningServer:
        defaults = {"port": 0, "database_url": f"sqlite:///{tmp_path / 'sweeper.db'}", "logdir": tmp_path / "runs"}
        server = start_in_thread(Settings(**{**defaults, **overrides}))
        running.append(server)
        return server

    yield start
    for server in reversed(running):
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., RunningServer]) -> RunningServer:
    return start_server()

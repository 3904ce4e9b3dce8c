"""Fixtures for the API tests: apps on a real SQLite file in tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'sweeper.db'}", logdir=tmp_path / "runs")


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

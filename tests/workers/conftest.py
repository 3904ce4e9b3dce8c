"""Fixtures for the worker tests: real servers on a SQLite file in tmp_path, and fake child programs."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sweeper.client import Client
from workers_testing import FAKE_CHILD


@pytest.fixture(autouse=True)
def own_worker_id_reservations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test reserves worker ids in its own folder, so tests never see each other's supervisors."""
    monkeypatch.setenv("SWEEPER_LOCK_DIR", str(tmp_path / "worker-ids"))


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start API servers in threads (port 0 unless given); all are stopped at teardown."""
    from api.server import start_in_thread
    from api.settings import Settings

    running: list[Any] = []

    def start(**overrides: Any) -> Any:
        settings = Settings(**{"database_url": f"sqlite:///{tmp_path / 'db.sqlite'}", "logdir": tmp_path / "runs",
                               "port": 0, **overrides})
        server = start_in_thread(settings)
        running.append(server)
        return server

    yield start
    for server in reversed(running):
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., Any]) -> Any:
    return start_server()


@pytest.fixture
def client(server: Any) -> Iterator[Client]:
    with Client(server.url, retries=2, backoff=0.05) as client:
        yield client


@pytest.fixture(autouse=True)
def unfreeze_garbage_collection() -> Iterator[None]:
    """An agent run in the test process freezes what lives then (see workers.agent); thaw it after the
    test, so the suite's own objects stay collectable."""
    import gc

    yield
    gc.unfreeze()


@pytest.fixture
def fake_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The command of a fake worker child (workers_testing.FAKE_CHILD), which records its runs and events under
    tmp_path/children."""
    script = tmp_path / "fake_child.py"
    script.write_text(FAKE_CHILD)
    out = tmp_path / "children"
    out.mkdir()
    monkeypatch.setenv("FAKE_CHILD_OUT", str(out))
    return [sys.executable, str(script)]

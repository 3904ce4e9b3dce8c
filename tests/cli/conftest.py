"""Fixtures for the CLI tests: a real server on a SQLite file in tmp_path, and running `sweeper` against it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api.server import RunningServer, start_in_thread
from api.settings import Settings


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    settings = Settings(port=0, database_url=f"sqlite:///{tmp_path / 'sweeper.db'}", logdir=tmp_path / "runs")
    with start_in_thread(settings) as running:
        yield running

"""Fixtures for end-to-end tests: processes that end at teardown, with their logs shown on failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_processes import Processes


@pytest.fixture
def processes(tmp_path: Path, request) -> Iterator[Processes]:
    running = Processes(tmp_path)
    yield running
    running.stop_all()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(running.logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)

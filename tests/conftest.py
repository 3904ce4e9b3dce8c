"""Markers that follow from a test's parameters rather than from its module.

Every API test on the app's settings runs once per database backend (see tests/api/conftest.py); its
PostgreSQL run needs a PostgreSQL server, so it is marked `postgres`, and `make test-fast` leaves it to
`make test` (the SQLite run exercises the same code).

And the one host name Starlette's TestClient sends (`Host: testserver`): a server without a token answers
only to its own names (api.origin_guard), so the tests' apps are told to answer to this one too, as an
operator allows a name (tests/api/test_origin_guard.py reaches its apps as 127.0.0.1 and sets its own).
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("SWEEPER_ALLOWED_HOSTS", "testserver")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("database_backend") == "postgresql":
            item.add_marker(pytest.mark.postgres)

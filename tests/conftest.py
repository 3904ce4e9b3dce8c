"""Markers that follow from a test's parameters rather than from its module.

Every API test on the app's settings runs once per database backend (see tests/api/conftest.py); its
PostgreSQL run needs a PostgreSQL server, so it is marked `postgres`, and `make test-fast` leaves it to
`make test` (the SQLite run exercises the same code).
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("database_backend") == "postgresql":
            item.add_marker(pytest.mark.postgres)

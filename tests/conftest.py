"""Markers that follow from a test's parameters rather than from its module.

Every API test on the app's settings runs once per database backend (see tests/api/conftest.py); its
PostgreSQL run needs a PostgreSQL server, so it is marked `postgres`, and `make test-fast` leaves it to
`make test` (the SQLite run exercises the same code).

And the one host name Starlette's TestClient sends (`Host: testserver`): a server without a token answers
only to its own names (api.origin_guard), so the tests' apps are told to answer to this one too, as an
operator allows a name (tests/api/test_origin_guard.py reaches its apps as 127.0.0.1 and sets its own).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator

import pytest

from sweeper import _registry

ANY_HPARAMS_MODEL = "any_hparams"
"""The model of `any_hparams_model`: it declares no hparams, so a spec may name any."""


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("SWEEPER_ALLOWED_HOSTS", "testserver")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("database_backend") == "postgresql":
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
def any_hparams_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A plugin model that declares no hparams, registered for one test: for tests of search spaces, whose
    hparams (a, b, h0, ...) no real model reads. It is never built."""
    models = copy.deepcopy(_registry.models)
    models.register(ANY_HPARAMS_MODEL, "json:loads")
    monkeypatch.setattr(_registry, "models", models)
    yield ANY_HPARAMS_MODEL

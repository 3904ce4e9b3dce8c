"""Fuzzing the API against its own OpenAPI document: no server errors, and every answer is documented.

Schemathesis reads the document the app itself serves, generates requests for every operation, valid
and invalid, from a fixed seed and a bounded number of examples, sends them to a real app (on a SQLite
file holding completed, failed and running trials and a paused sweep, so reads find something), and
checks each answer: not a 5xx, a status code the operation documents, a content type and a body that
match the documented schema.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from api_testing import API, Worker, create_sweep, grid_spec
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from api.app import create_app
from api.settings import Settings

SEED = 20_240_611
EXAMPLES_PER_OPERATION = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Excluded: the web page's shell and static files, and the TensorBoard proxy, which answer HTML and
# whatever TensorBoard serves rather than documented JSON; and starting a sweep's TensorBoard, which
# launches a real TensorBoard process per call (its own tests cover it).
NOT_FUZZED = r"^/(static/|tensorboard/)|^/$|/tensorboard$"


def _config() -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "generation": {"max-examples": EXAMPLES_PER_OPERATION, "deterministic": True, "database": "none"},
        # Stateful runs chain calls through links the document does not declare; each operation on its own.
        "phases": {"stateful": {"enabled": False}},
    })


def _populate(client: TestClient) -> None:
    """A sweep with a completed, a failed, a running and a pending trial, and a paused one, so reads of
    sweep 1 and trials 1..4 answer 200 with real data."""
    create_sweep(client, grid_spec(name="fuzzed", values=6))
    worker = Worker(client, "fuzz-worker")
    done = worker.claim_id()
    worker.report(done, 0, loss=0.5, val_accuracy=0.8, learning_rate=0.01)
    worker.complete(done, val_accuracy=0.8, loss=0.5)
    failed = worker.claim_id()
    worker.fail(failed, error="boom")
    worker.claim_id()
    Worker(client, "other").claim_id()
    create_sweep(client, grid_spec(name="paused"))
    assert client.post(f"{API}/sweeps/2/pause").status_code == 200


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    """A real app per operation: schemathesis runs its lifespan from the first request to the test's end."""
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'sweeper.db'}", logdir=tmp_path / "runs"))
    _populate(TestClient(app))  # a TestClient outside `with` leaves the lifespan to schemathesis
    return app


# The document comes from the app itself (built here only to describe itself, on an in-memory database);
# the requests go to the `app` fixture. (Loading it from a fixture, schemathesis.pytest.from_fixture, fails
# on pytest 9 in schemathesis 4.32; from_asgi here would start an app's lifespan while tests are collected.)
schema = schemathesis.openapi.from_dict(create_app(Settings(database_url="sqlite://")).openapi(),
                                        config=_config()).exclude(path_regex=NOT_FUZZED)


@schema.parametrize()
# The app is shared by one operation's examples on purpose: what one request creates, the next may read.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_answer_is_documented_and_none_is_a_server_error(case: schemathesis.Case, app: FastAPI) -> None:
    case.call_and_validate(app=app, checks=CHECKS)

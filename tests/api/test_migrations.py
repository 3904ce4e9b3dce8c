"""Schema migrations: every database, empty or from an older sweeper, comes to the code's schema
with every row kept, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import Engine, inspect, text
from typer.testing import CliRunner

from api.app import create_app
from api.db import make_engine
from api.migrate import BASE_REVISION, current_revision, head_revision, upgrade
from api.models import Base
from api.settings import Settings
from cli import app as cli
from postgres_testing import isolated_schema

SPEC = {"name": "kept", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
        "hparams": {"units": {"type": "discrete", "values": [16, 32, 64]}}, "search": {"strategy": "grid"},
        "train": {"epochs": 2}}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sweeper.db'}"
        return
    with isolated_schema() as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _differences(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)


def _fill_first_revision(engine: Engine) -> None:
    """Rows as sweeper 0.1 wrote them: a sweep with a completed, a running and a pending trial."""
    import json

    now = datetime(2026, 11, 1, 12, 0, 0)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO sweeps (id, name, status, spec, total_trials, next_index, created_at, consecutive_failures)"
            " VALUES (1, 'kept', 'running', :spec, 3, 3, :now, 0)"), {"spec": json.dumps(SPEC), "now": now})
        for trial_id, state, metrics in ((1, "completed", {"val_accuracy": 0.9}), (2, "running", {}),
                                         (3, "pending", {})):
            connection.execute(text(
                'INSERT INTO trials (id, sweep_id, "index", state, hparams, metrics, attempts, worker_id, created_at)'
                " VALUES (:id, 1, :index, :state, :hparams, :metrics, 1, 'host-gpu0', :now)"),
                {"id": trial_id, "index": trial_id - 1, "state": state, "now": now,
                 "hparams": json.dumps({"units": 16 * trial_id}), "metrics": json.dumps(metrics)})
        connection.execute(text(
            "INSERT INTO trial_epochs (trial_id, epoch, metrics, reported_at) VALUES (1, 0, :metrics, :now)"),
            {"metrics": json.dumps({"val_accuracy": 0.9}), "now": now})
        connection.execute(text(
            "INSERT INTO workers (id, host, gpu, first_seen_at, last_seen_at) VALUES ('host-gpu0', 'host', '0', :now, :now)"),
            {"now": now})


def test_an_empty_database_is_upgraded_to_exactly_the_codes_schema(engine: Engine) -> None:
    assert upgrade(engine) == (None, head_revision())
    assert current_revision(engine) == head_revision()
    assert _differences(engine) == []


def test_upgrading_twice_changes_nothing(engine: Engine) -> None:
    upgrade(engine)
    assert upgrade(engine) == (head_revision(), head_revision())


def test_the_first_revisions_rows_survive_the_upgrade_to_head(engine: Engine, database_url: str,
                                                              tmp_path: Path) -> None:
    upgrade(engine, BASE_REVISION)
    _fill_first_revision(engine)

    upgrade(engine)

    assert _differences(engine) == []
    with TestClient(create_app(Settings(database_url=database_url, logdir=tmp_path / "runs"))) as client:
        sweep = client.get("/api/v1/sweeps/1").json()
        trials = client.get("/api/v1/sweeps/1/trials").json()["data"]
        history = client.get("/api/v1/trials/1").json()["history"]
        workers = client.get("/api/v1/workers").json()["data"]
    assert (sweep["name"], sweep["status"], sweep["total_trials"]) == ("kept", "running", 3)
    assert sweep["spec"]["hparams"]["units"]["values"] == [16, 32, 64]
    assert [(trial["id"], trial["state"], trial["hparams"]) for trial in trials] == [
        (1, "completed", {"units": 16}), (2, "running", {"units": 32}), (3, "pending", {"units": 48})]
    assert trials[0]["metrics"] == {"val_accuracy": 0.9}
    assert [{key: entry[key] for key in ("epoch", "metrics")} for entry in history] == [
        {"epoch": 0, "metrics": {"val_accuracy": 0.9}}]
    assert [worker["id"] for worker in workers] == ["host-gpu0"]


def test_a_database_from_before_migrations_is_recognised_as_the_first_revision(engine: Engine) -> None:
    # Sweeper 0.1 created its tables without Alembic: no alembic_version table.
    upgrade(engine, BASE_REVISION)
    _fill_first_revision(engine)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
    assert current_revision(engine) is None

    assert upgrade(engine) == (BASE_REVISION, head_revision())
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM trials")).scalar_one() == 3


def test_the_server_upgrades_the_database_when_it_starts(engine: Engine, database_url: str, tmp_path: Path) -> None:
    upgrade(engine, BASE_REVISION)
    _fill_first_revision(engine)

    with TestClient(create_app(Settings(database_url=database_url, logdir=tmp_path / "runs"))) as client:
        assert client.get("/api/v1/sweeps").json()["count"] == 1
    assert current_revision(engine) == head_revision()


def test_sweeper_db_upgrade_reports_what_it_did(database_url: str) -> None:
    runner = CliRunner()
    first = runner.invoke(cli, ["db", "upgrade", "--database-url", database_url])
    again = runner.invoke(cli, ["db", "upgrade", "--database-url", database_url])

    assert first.exit_code == 0, first.output
    assert f"from revision none (empty) to {head_revision()}" in first.output
    assert again.exit_code == 0, again.output
    assert f"at revision {head_revision()}; nothing to do" in again.output
    engine = make_engine(database_url)
    try:
        assert set(inspect(engine).get_table_names()) >= {"sweeps", "trials", "trial_epochs", "workers"}
    finally:
        engine.dispose()


def test_a_sweep_stored_before_multi_gpu_claims_keeps_its_specs_gpus_per_trial(engine: Engine, database_url: str,
                                                                               tmp_path: Path) -> None:
    import json

    upgrade(engine, "0006")
    spec = {**SPEC, "train": {"epochs": 2, "gpus_per_trial": 2}}
    with engine.begin() as connection:
        for sweep_id, stored in ((1, spec), (2, SPEC)):
            connection.execute(text(
                "INSERT INTO sweeps (id, name, status, spec, total_trials, next_index, created_at, "
                "consecutive_failures, run_digits) VALUES (:id, 'kept', 'running', :spec, 3, 0, :now, 0, 4)"),
                {"id": sweep_id, "spec": json.dumps(stored), "now": datetime(2026, 11, 1, 12, 0, 0)})

    upgrade(engine)

    with engine.connect() as connection:
        assert connection.execute(text("SELECT id, gpus_per_trial FROM sweeps ORDER BY id")).all() == [(1, 2), (2, 1)]
    with TestClient(create_app(Settings(database_url=database_url, logdir=tmp_path / "runs"))) as client:
        claimed = client.post("/api/v1/trials/claim", json={"worker_id": "w", "host": "h", "gpus": 1}).json()
    assert claimed["sweep_id"] == 2

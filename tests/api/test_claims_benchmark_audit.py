"""bench/claims.py's correctness check: the database after a run tells a trial handed out twice or a
configuration skipped, which is what makes the benchmark exit 1."""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from pathlib import Path
from types import ModuleType

import pytest

from api_testing import Worker, create_sweep
from fastapi.testclient import TestClient

from api.settings import Settings

# The benchmark audits the SQLite file its server wrote.
pytestmark = pytest.mark.sqlite_only

BENCHMARK = Path(__file__).resolve().parents[2] / "bench" / "claims.py"


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("claims_benchmark", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def drained_sweep(client: TestClient, trials: int) -> int:
    benchmark = load_benchmark()
    sweep_id = create_sweep(client, benchmark.sweep_spec(trials))["id"]
    worker = Worker(client, "bench-0", host="bench")
    while (assignment := worker.claim()) is not None:
        assert worker.complete(assignment["trial_id"], val_accuracy=0.5).status_code == 200
    return sweep_id


def test_a_clean_run_passes_the_audit(client: TestClient, settings: Settings):
    sweep_id = drained_sweep(client, 5)

    assert load_benchmark().audit_sweep(Path(settings.database_url.removeprefix("sqlite:///")), sweep_id, 5) == (0, [])


def test_a_trial_claimed_twice_and_a_missing_configuration_fail_the_audit(client: TestClient, settings: Settings):
    sweep_id = drained_sweep(client, 5)
    database = Path(settings.database_url.removeprefix("sqlite:///"))
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE trials SET attempts = 2 WHERE \"index\" = 1")
        connection.execute("DELETE FROM trials WHERE \"index\" = 3")

    twice, problems = load_benchmark().audit_sweep(database, sweep_id, 5)

    assert twice == 1
    assert problems[0] == "1 trial(s) claimed more than once (attempts > 1)"
    assert problems[1].startswith("configurations skipped or repeated: 4 rows, 4 distinct indexes")

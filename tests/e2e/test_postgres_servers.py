"""Two `sweeper serve` processes on one PostgreSQL database, 64 workers claiming through both at once:
every configuration is handed out exactly once, in the strategy's order, and every sweep completes.

Claims on PostgreSQL lock rows with SELECT ... FOR UPDATE SKIP LOCKED and the sweep's row while its
next configuration is generated; nothing in a server process's memory takes part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from claiming_workers import ClaimRecord
from e2e_processes import BIN, Processes, free_port, wait_until
from postgres_testing import isolated_schema

from sweeper import make_strategy, parse_spec

pytestmark = pytest.mark.e2e

API = "/api/v1"
WORKERS = 64


def _spec(name: str, search: dict[str, Any], values: int) -> dict[str, Any]:
    return {"name": name, "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
            "hparams": {"units": {"type": "discrete", "values": list(range(1, values + 1))},
                        "dropout": {"type": "real_interval", "min": 0.0, "max": 0.5}},
            "search": search, "train": {"epochs": 1}}


def test_two_servers_on_one_postgres_database_hand_each_configuration_to_exactly_one_worker(
        processes: Processes, tmp_path: Path) -> None:
    with isolated_schema() as database_url:
        urls = []
        for name in ("server-a", "server-b"):
            port = free_port()
            processes.start(name, str(BIN / "sweeper"), "serve", "--port", str(port), "--database-url",
                            database_url, "--logdir", str(tmp_path / "runs"))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            wait_until(lambda url=url: httpx.get(f"{url}/healthz").status_code == 200, 60, f"{url} to start")

        specs = [_spec("grid", {"strategy": "grid", "grid_points": 2}, 60),
                 _spec("random", {"strategy": "random", "max_trials": 40, "seed": 3}, 1000)]
        sweep_ids = [httpx.post(f"{urls[0]}{API}/sweeps", json=spec).raise_for_status().json()["id"]
                     for spec in specs]

        record = ClaimRecord()
        record.run(urls, workers=WORKERS, timeout=240)

        assert record.errors == []
        claims, configs = record.claims, record.configs
        strategies = [make_strategy(parse_spec(spec)) for spec in specs]
        assert len(claims) == sum(strategy.total for strategy in strategies) == 160
        assert set(claims.values()) == {1}, "a trial was handed out twice"
        for sweep_id, strategy, url in zip(sweep_ids, strategies, urls):
            final = httpx.get(f"{url}{API}/sweeps/{sweep_id}").json()
            trials = httpx.get(f"{url}{API}/sweeps/{sweep_id}/trials").json()["data"]
            assert final["status"] == "completed"
            # No configuration skipped or repeated: exactly the strategy's, in its order.
            assert [trial["hparams"] for trial in trials] == [strategy.config_at(i) for i in range(strategy.total)]
            assert all(configs[trial["id"]] == (sweep_id, trial["hparams"]) for trial in trials)
        processes.stop_all()

"""A multi-objective sweep's Pareto front in TensorBoard: the server writes each completed trial's pareto_rank
as the front changes, and the HParams dashboard's backend (read here exactly as the dashboard asks it) shows
the column and filters the sweep to its front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from tensorboard.plugins.hparams import api_pb2
from test_runner import _session_groups

from sweeper import log_location
from sweeper.hparams_log import SessionStatus, TrialSession

from api.app import create_app
from api.settings import Settings

SPEC: dict[str, Any] = {
    "name": "trade-off", "model": "mlp", "dataset": "digits",
    "objective": [{"metric": "val_accuracy"}, {"metric": "num_params", "goal": "minimize"}],
    "hparams": {"units": {"type": "discrete", "values": [8, 16, 32]}},
    "search": {"strategy": "grid"},
}
ACCURACY = {8: 0.90, 16: 0.85, 32: 0.95}
"""units 16 is larger and less accurate than units 8: behind the front (rank 1); 8 and 32 are the trade-off."""


def complete(client: TestClient, units_wanted: set[int]) -> dict[int, str]:
    """Claim and complete trials (as a worker would, a session in each trial's folder) until those units ran;
    their run names (`trial-0001`) by units."""
    runs: dict[int, str] = {}
    while units_wanted - set(runs):
        assignment = client.post("/api/v1/trials/claim", json={"worker_id": "w", "host": "h"}).json()
        units = assignment["hparams"]["units"]
        folder = assignment["logdir"]
        with TrialSession(folder, log_location.name(folder), assignment["hparams"]) as session:
            session.status = SessionStatus.success
        client.post(f"/api/v1/trials/{assignment['trial_id']}/complete", json={
            "worker_id": "w", "lease_token": assignment["lease_token"],
            "metrics": {"val_accuracy": ACCURACY[units], "num_params": float(units * 100)}})
        runs[units] = log_location.name(folder)
    return runs


def pareto_ranks_in_tensorboard(sweep_folder: Path, **filters: Any) -> dict[str, float]:
    """Each session's pareto_rank as the HParams dashboard shows it (by run name)."""
    column = api_pb2.ColParams(metric=api_pb2.MetricName(group="pareto", tag="pareto_rank"), **filters)
    return {group.name: value.value for group in _session_groups(sweep_folder, [column])
            for value in group.metric_values if value.name.tag == "pareto_rank"}


def test_the_dashboard_shows_each_trials_pareto_rank_as_the_front_changes(tmp_path: Path):
    logdir = tmp_path / "runs"
    with TestClient(create_app(Settings(database_url=f"sqlite:///{tmp_path / 's.db'}", logdir=logdir))) as client:
        sweep_id = client.post("/api/v1/sweeps", json=SPEC).json()["id"]
        pareto_logs = client.app.state.pareto_logs  # type: ignore[attr-defined]
        sweep_folder = Path(log_location.sweep_dir(logdir, sweep_id))

        first = complete(client, {8, 16})
        assert pareto_logs.write_once() == 2
        assert pareto_ranks_in_tensorboard(sweep_folder) == {first[8]: 0.0, first[16]: 1.0}

        ids = {**first, **complete(client, {32})}
        # units 32 joins the front; nobody's rank changes but its own, so one file is written.
        assert pareto_logs.write_once() == 1
        assert pareto_logs.write_once() == 0  # nothing changed since
        assert pareto_ranks_in_tensorboard(sweep_folder) == {ids[8]: 0.0, ids[16]: 1.0, ids[32]: 0.0}
        # The dashboard's filter on the column keeps the front only.
        front = pareto_ranks_in_tensorboard(sweep_folder, filter_interval=api_pb2.Interval(min_value=0, max_value=0))
        assert set(front) == {ids[8], ids[32]}

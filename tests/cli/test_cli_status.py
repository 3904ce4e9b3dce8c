"""`sweeper status` against a real server: a pruned trial reads "pruned @ N", N the epochs it trained, and the
title counts pruned trials apart from completed and failed ones."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from api.server import RunningServer
from cli import app

ASHA_SPEC: dict[str, Any] = {
    "name": "asha-grid", "model": "mlp", "dataset": "digits",
    "objective": {"metric": "val_accuracy", "goal": "maximize"},
    "hparams": {"units": {"type": "discrete", "values": [8, 16, 32]}},
    "search": {"strategy": "grid"},
    "stopping": {"rule": "asha", "min_epochs": 1, "reduction_factor": 3},
    "train": {"epochs": 4},
}
CURVES = {8: [0.90, 0.95, 0.97, 0.98], 16: [0.95, 0.96, 0.91, 0.92], 32: [0.50, 0.60, 0.70, 0.80]}
"""val_accuracy per epoch by units. With rungs after 1 and 3 epochs and 1 in 3 trials going on: units 8 trains
to the end; units 16 leads at the first rung and trails at the second, so it stops after 3 epochs; units 32
trails at the first rung and stops after 1."""


def train_as_a_worker(url: str, curves: dict[int, list[float]]) -> None:
    """Claim every trial of the sweep and report its curve an epoch at a time, stopping where the server
    answers "prune", then complete it with the metrics it reached, as `workers.agent` does."""
    with httpx.Client(base_url=f"{url}/api/v1", timeout=30) as api:
        while (claim := api.post("/trials/claim", json={"worker_id": "w1", "host": "box"})).status_code == 200:
            assignment = claim.json()
            trial, lease = assignment["trial_id"], assignment["lease_token"]
            body = {"worker_id": "w1", "lease_token": lease}
            for epoch, value in enumerate(curves[assignment["hparams"]["units"]]):
                metrics = {"val_accuracy": value, "loss": 1 - value}
                answer = api.post(f"/trials/{trial}/metrics", json={**body, "epoch": epoch, "metrics": metrics})
                assert answer.status_code == 200, answer.text
                if answer.json()["action"] == "prune":
                    break
            done = api.post(f"/trials/{trial}/complete", json={**body, "metrics": metrics})
            assert done.status_code == 200, done.text
        assert claim.status_code == 204, claim.text


def sweeper(server: RunningServer, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--server", server.url], env={"COLUMNS": "200"})
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture
def pruned_sweep(server: RunningServer) -> dict[str, Any]:
    sweep = httpx.post(f"{server.url}/api/v1/sweeps", json=ASHA_SPEC).json()
    train_as_a_worker(server.url, CURVES)
    trials = httpx.get(f"{server.url}/api/v1/sweeps/{sweep['id']}/trials").json()["data"]
    # What the server decided, so that the assertions below are about the command, not about ASHA.
    assert [(t["hparams"]["units"], t["state"], t["pruned_at_epoch"]) for t in trials] == [
        (8, "completed", None), (16, "pruned", 2), (32, "pruned", 0)]
    return {"id": sweep["id"], "trials": {t["hparams"]["units"]: t for t in trials}}


def test_status_of_a_sweep_marks_each_pruned_trial_with_the_epochs_it_trained(server: RunningServer,
                                                                             pruned_sweep: dict[str, Any]) -> None:
    trials = pruned_sweep["trials"]

    code, output = sweeper(server, "status", str(pruned_sweep["id"]))

    assert code == 0
    # Trials go by their number in the sweep (1, 2, 3), not their global id.
    assert f" {trials[8]['number']} completed 0.98 8 " in output
    # pruned_at_epoch counts from 0: the trial pruned after epoch 2 trained 3 epochs.
    assert f" {trials[16]['number']} pruned @ 3 0.91 16 " in output
    assert f" {trials[32]['number']} pruned @ 1 0.5 32 " in output
    assert output.endswith("pruned @ N: stopped by the asha rule after N epochs trained")


def test_status_of_a_sweep_counts_pruned_trials_apart_from_completed_ones(server: RunningServer,
                                                                          pruned_sweep: dict[str, Any]) -> None:
    code, output = sweeper(server, "status", str(pruned_sweep["id"]))

    assert code == 0
    assert output.startswith(f"Sweep {pruned_sweep['id']} asha-grid: completed, 3/3 finished "
                             "(1 completed, 2 pruned)")


def test_status_of_a_sweep_without_pruned_trials_has_no_pruning_note(server: RunningServer) -> None:
    spec = {**ASHA_SPEC, "name": "plain", "hparams": {"units": 8}}
    spec.pop("stopping")
    sweep = httpx.post(f"{server.url}/api/v1/sweeps", json=spec).json()
    train_as_a_worker(server.url, CURVES)

    code, output = sweeper(server, "status", str(sweep["id"]))

    assert code == 0
    assert output.startswith(f"Same in every trial: units=8 Sweep {sweep['id']} plain: completed, 1/1 finished "
                             "(1 completed)")
    assert "pruned" not in output


def test_status_of_a_multi_objective_sweep_marks_its_pareto_front_and_shows_every_objective(server: RunningServer):
    spec = {**ASHA_SPEC, "name": "trade-off", "stopping": None,
            "objective": [{"metric": "val_accuracy"}, {"metric": "num_params", "goal": "minimize"}]}
    spec.pop("stopping")
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as api:
        sweep = api.post("/sweeps", json=spec).json()
        while (claim := api.post("/trials/claim", json={"worker_id": "w1", "host": "box"})).status_code == 200:
            assignment = claim.json()
            units = assignment["hparams"]["units"]
            # units 16 is larger than 8 and less accurate: dominated; 8 and 32 are the trade-off.
            accuracy = {8: 0.9, 16: 0.85, 32: 0.95}[units]
            api.post(f"/trials/{assignment['trial_id']}/complete", json={
                "worker_id": "w1", "lease_token": assignment["lease_token"],
                "metrics": {"val_accuracy": accuracy, "num_params": float(units * 100)}})
        trials = {t["hparams"]["units"]: t["number"] for t in api.get(f"/sweeps/{sweep['id']}/trials").json()["data"]}

    code, output = sweeper(server, "status", str(sweep["id"]))

    assert code == 0, output
    assert " # state val_accuracy num_params units time " in output
    assert f" ◆{trials[8]} completed 0.9 800 8 " in output
    assert f" ◆{trials[32]} completed 0.95 3200 32 " in output
    assert f" {trials[16]} completed 0.85 1600 16 " in output
    assert output.endswith("◆: on the Pareto front")


def test_the_end_of_a_multi_objective_sweep_names_its_pareto_front_not_a_best_trial():
    from rich.console import Console

    from cli import _console

    sweep = {"id": 4, "name": "trade-off", "status": "completed", "total_trials": 3, "best_trial": None,
             "pareto_front": [10, 12], "trial_counts": {"completed": 3},
             "spec": {"objective": {"metric": "val_accuracy"},
                      "objectives": [{"metric": "val_accuracy"}, {"metric": "num_params"}]}}
    console = Console(record=True, width=200)

    _console.summary(sweep, "runs", console, trials=[{"id": 10, "number": 1}, {"id": 11, "number": 2},
                                                     {"id": 12, "number": 3}])

    # By their numbers in the sweep, as `sweeper status` shows them.
    assert console.export_text().splitlines()[1] == (
        "Pareto front (val_accuracy, num_params): trials 1, 3; sweeper status 4 shows their values")


def test_the_end_of_a_pbt_sweep_shows_the_best_members_schedule_segment_by_segment():
    from rich.console import Console

    from cli import _console

    first = {"segment": 1, "start_epoch": 0, "hparams": {"learning_rate": 0.0009, "dropout": 0.2, "units": 64}}
    copied = {"segment": 2, "start_epoch": 3, "parent_trial_id": 11, "parent_number": 1, "parent_epoch": 2,
              "hparams": {"learning_rate": 0.0425, "dropout": 0.16, "units": 128}}
    best = {"id": 12, "number": 2, "metrics": {"val_accuracy": 0.9889}, "hparams": copied["hparams"],
            "lineage": [first, copied]}
    sweep = {"id": 1, "name": "pbt", "status": "completed", "total_trials": 8, "best_trial": best,
             "trial_counts": {"completed": 8},
             "spec": {"objective": {"metric": "val_accuracy"}, "train": {"epochs": 15},
                      "search": {"strategy": "pbt", "mutable": ["learning_rate", "dropout"]}}}
    console = Console(record=True, width=200)

    _console.summary(sweep, "runs", console)

    lines = console.export_text().splitlines()
    assert lines[1:5] == ["Best trial 2: val_accuracy=0.9889", "  learning_rate = 0.0425", "  dropout = 0.16",
                          "  units = 128"]
    assert lines[5:8] == ["  Its schedule (Population Based Training, 2 segments):",
                          "    epochs 1-3: learning_rate = 0.0009, dropout = 0.2",
                          "    epochs 4-15, copied from member 1 after epoch 3: learning_rate = 0.0425, dropout = 0.16"]

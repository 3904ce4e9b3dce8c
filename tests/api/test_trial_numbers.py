"""A trial's number within its sweep (from 1): what the API finds it by, what its worker is told, and how its
TensorBoard folder is named, so that folders and runs sort in number order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from api_testing import API, Worker, create_sweep, grid_spec, random_spec
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, update

from api.models import SweepRow


def claim_all(worker: Worker) -> list[dict[str, Any]]:
    """Claim every trial there is, each reporting one epoch and completing; their assignments."""
    assignments = []
    while (assignment := worker.claim()) is not None:
        assignments.append(assignment)
        worker.report(assignment["trial_id"], 0, val_accuracy=0.5)
        worker.complete(assignment["trial_id"], val_accuracy=0.5)
    return assignments


def test_a_trial_is_found_by_its_sweep_and_number_with_its_history(client: TestClient) -> None:
    create_sweep(client, grid_spec("other", values=2))  # so ids and numbers differ
    sweep = create_sweep(client, grid_spec(values=3))
    claim_all(Worker(client, "w1"))
    second = client.get(f"{API}/sweeps/{sweep['id']}/trials").json()["data"]
    assert [trial["number"] for trial in second] == [1, 2, 3]

    found = client.get(f"{API}/sweeps/{sweep['id']}/trials/2")

    assert found.status_code == 200, found.text
    by_id = client.get(f"{API}/trials/{second[1]['id']}").json()
    assert found.json() == by_id
    assert found.json()["number"] == 2 and found.json()["id"] == second[1]["id"] == 4  # not its number
    assert [point["epoch"] for point in found.json()["history"]] == [0]


def test_a_number_the_sweep_has_not_reached_is_404_naming_the_sweep_and_the_number(client: TestClient) -> None:
    sweep = create_sweep(client, grid_spec(values=3))
    Worker(client, "w1").claim()

    missing = client.get(f"{API}/sweeps/{sweep['id']}/trials/3")

    assert missing.status_code == 404
    assert missing.json() == {"detail": f"sweep {sweep['id']} has no trial 3 (its trials so far: 1 to 1)"}


def test_a_trial_number_of_a_sweep_that_does_not_exist_is_404_naming_the_sweep(client: TestClient) -> None:
    missing = client.get(f"{API}/sweeps/41/trials/1")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "sweep 41 not found"}


@pytest.mark.parametrize("number", ["0", "-1", "x", str(2**63)])
def test_a_trial_number_must_be_a_whole_number_from_1(client: TestClient, number: str) -> None:
    sweep = create_sweep(client, grid_spec(values=3))
    answer = client.get(f"{API}/sweeps/{sweep['id']}/trials/{number}")
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["path", "number"]


def test_the_worker_is_told_the_trials_number_and_its_folder_is_named_by_it(client: TestClient,
                                                                            settings) -> None:
    create_sweep(client, grid_spec("other", values=2))
    sweep = create_sweep(client, random_spec(max_trials=12))
    assignments = [a for a in claim_all(Worker(client, "w1")) if a["sweep_id"] == sweep["id"]]

    assert [a["number"] for a in assignments] == list(range(1, 13))
    sweep_folder = (settings.logdir / str(sweep["id"])).resolve()
    assert [a["logdir"] for a in assignments] == [str(sweep_folder / f"trial-{n:04d}") for n in range(1, 13)]
    names = [Path(a["logdir"]).name for a in assignments]
    assert sorted(names) == names  # text order is number order, as TensorBoard lists runs


def test_a_sweep_with_more_trials_than_four_digits_hold_pads_its_numbers_wider(client: TestClient) -> None:
    sweep = create_sweep(client, random_spec(max_trials=12_000))
    assignment = Worker(client, "w1").claim()
    assert assignment is not None and assignment["sweep_id"] == sweep["id"]
    assert Path(assignment["logdir"]).name == "trial-00001"


def test_a_retried_trial_gets_the_same_folder_and_checkpoint_back(client: TestClient) -> None:
    create_sweep(client, grid_spec(values=2, max_attempts=3))
    first = Worker(client, "w1").claim()
    assert first is not None
    Worker(client, "w1").fail(first["trial_id"], "worker process killed by SIGKILL", kind="crash")

    retry = Worker(client, "w2").claim()

    assert retry is not None and retry["trial_id"] == first["trial_id"] and retry["attempt"] == 2
    assert (retry["number"], retry["logdir"], retry["checkpoint_dir"]) == \
        (first["number"], first["logdir"], first["checkpoint_dir"])


def test_a_sweep_from_before_numbered_folders_keeps_its_trials_in_folders_named_by_id(
        client: TestClient, settings, make_client) -> None:
    # A sweep created by an earlier version has no folder width: its trials' folders are named by trial id,
    # and a retry must find the checkpoint its first attempt left there.
    create_sweep(client, grid_spec("other", values=2))
    claim_all(Worker(client, "w1"))  # so the next sweep's trial ids are not its numbers
    sweep = create_sweep(client, grid_spec(values=3, max_attempts=3))
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(update(SweepRow).where(SweepRow.id == sweep["id"]).values(run_digits=None))
    engine.dispose()
    restarted = make_client(settings)  # a server started on the upgraded database

    first = Worker(restarted, "w1").claim()
    assert first is not None and first["sweep_id"] == sweep["id"] and first["number"] == 1
    assert Path(first["logdir"]) == (settings.logdir / str(sweep["id"]) / str(first["trial_id"])).resolve()
    Worker(restarted, "w1").fail(first["trial_id"], "worker process killed by SIGKILL", kind="crash")
    retry = Worker(restarted, "w2").claim()
    assert retry is not None and (retry["trial_id"], retry["logdir"], retry["checkpoint_dir"]) == \
        (first["trial_id"], first["logdir"], first["checkpoint_dir"])

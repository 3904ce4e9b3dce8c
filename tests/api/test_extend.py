"""Extending a sweep: `POST /sweeps/{id}/extend {"max_trials": N}` gives it more trials; a completed sweep runs
again, and an adaptive search goes on from everything it learnt."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from api_testing import API, Worker, control, create_sweep, get_sweep, grid_spec, random_spec
from fastapi.testclient import TestClient
from test_adaptive_search import adaptive_spec, run_sequentially


def extend(client: TestClient, sweep_id: int, max_trials: int):  # type: ignore[no-untyped-def]
    return client.post(f"{API}/sweeps/{sweep_id}/extend", json={"max_trials": max_trials})


def test_a_completed_tpe_sweep_extended_runs_again_and_proposes_only_new_configurations(client: TestClient):
    space = {"units": {"type": "discrete", "values": [8, 16, 32, 64]},
             "depth": {"type": "discrete", "values": [1, 2, 3]}, "batch_size": 64}
    sweep = create_sweep(client, adaptive_spec("tpe", max_trials=6, hparams=space))
    first = run_sequentially(client, 6, lambda config: config["units"] / config["depth"])
    assert get_sweep(client, sweep["id"])["status"] == "completed"

    response = extend(client, sweep["id"], 10)

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "running" and response.json()["total_trials"] == 10
    assert response.json()["spec"]["search"]["max_trials"] == 10
    more = run_sequentially(client, 4, lambda config: config["units"] / config["depth"])
    assert len({tuple(sorted(config.items())) for config in first + more}) == 10
    assert Worker(client, "late").claim() is None
    assert get_sweep(client, sweep["id"])["status"] == "completed"


def test_a_random_sweep_over_intervals_extended_samples_past_its_first_budget(client: TestClient):
    sweep = create_sweep(client, random_spec(max_trials=2))
    worker = Worker(client, "w")
    for _ in range(2):
        worker.complete(worker.claim_id(), val_loss=1.0)

    assert extend(client, sweep["id"], 3).status_code == 200
    assert worker.claim() is not None


def test_another_server_process_sees_the_extension(settings, make_client: Callable[..., TestClient]):
    one, other = make_client(settings), make_client(settings)
    sweep = create_sweep(one, adaptive_spec("tpe", max_trials=2))
    run_sequentially(other, 2)  # `other` has the sweep's plan cached, with 2 trials

    assert extend(one, sweep["id"], 3).status_code == 200

    assert len(run_sequentially(other, 1)) == 1


@pytest.mark.parametrize(("spec", "max_trials", "message"), [
    (grid_spec(values=5, search={"strategy": "grid", "max_trials": 3}), 3,
     "must be more than the sweep's 3 trials, but got 3"),
    (grid_spec(values=3), 5, "must be more than the sweep's 3 trials, but got 5; its space has 3 configurations, "
                             "all of them handed out"),
])
def test_an_extension_that_adds_no_trial_is_a_422_naming_max_trials(client: TestClient, spec, max_trials: int,
                                                                   message: str):
    sweep = create_sweep(client, spec)

    response = extend(client, sweep["id"], max_trials)

    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "max_trials"] and error["msg"] == message
    assert get_sweep(client, sweep["id"])["total_trials"] == 3


def test_a_cancelled_sweep_cannot_be_extended(client: TestClient):
    sweep = create_sweep(client, random_spec(max_trials=2))
    control(client, sweep["id"], "cancel")

    response = extend(client, sweep["id"], 5)

    assert response.status_code == 409
    assert "only a running or paused or completed or failed sweep can be extended" in response.json()["detail"]

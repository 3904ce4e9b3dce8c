"""The search space through the API: its size before anything runs, conditional and log-scaled hparams."""

from __future__ import annotations

from api_testing import API, Worker, create_sweep, grid_spec, random_spec
from fastapi.testclient import TestClient

CONDITIONAL = {
    "optimizer": {"type": "discrete", "values": ["adam", "sgd"]},
    "momentum": {"type": "real_interval", "min": 0.5, "max": 0.9, "step": 0.2, "when": {"optimizer": "sgd"}},
    "learning_rate": {"type": "real_interval", "min": 1e-4, "max": 1e-1, "log": True},
}


def test_a_sweep_shows_its_grid_size_and_how_many_trials_it_runs(client: TestClient):
    limited = grid_spec(values=10, search={"strategy": "grid", "max_trials": 4})

    sweep = create_sweep(client, limited)

    assert (sweep["space_size"], sweep["total_trials"]) == (10, 4)
    assert client.get(f"{API}/sweeps/{sweep['id']}").json()["space_size"] == 10
    assert client.get(f"{API}/sweeps").json()["data"][0]["space_size"] == 10


def test_a_random_sweep_over_intervals_has_no_space_size(client: TestClient):
    sweep = create_sweep(client, random_spec(max_trials=5))

    assert (sweep["space_size"], sweep["total_trials"]) == (None, 5)


def test_validate_sizes_a_spec_without_creating_a_sweep(client: TestClient):
    spec = grid_spec(hparams=CONDITIONAL)

    response = client.post(f"{API}/sweeps/validate", json=spec)

    # Two grid points per interval: adam: 2 learning rates; sgd: 2 of the 3 momentum steps x 2 learning rates.
    assert response.status_code == 200, response.text
    assert (response.json()["space_size"], response.json()["total_trials"]) == (2 + 2 * 2, 6)
    assert client.get(f"{API}/sweeps").json()["count"] == 0


def test_validate_reports_problems_like_create_does(client: TestClient):
    spec = grid_spec(hparams={**CONDITIONAL, "momentum": {**CONDITIONAL["momentum"], "when": {"optimizer": "lbfgs"}}})

    response = client.post(f"{API}/sweeps/validate", json=spec)

    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "hparams", "momentum", "when", "optimizer"]
    assert "optimizer never takes 'lbfgs'" in problem["msg"]


def test_workers_get_only_the_active_hparams_and_the_names_to_log_on_a_log_scale(client: TestClient):
    create_sweep(client, grid_spec(hparams=CONDITIONAL))
    worker = Worker(client, "w1")

    assignments = []
    while (assignment := worker.claim()) is not None:
        assignments.append(assignment)
        assert worker.complete(assignment["trial_id"], val_accuracy=0.5).status_code == 200

    assert len(assignments) == 6
    for assignment in assignments:
        hparams = assignment["hparams"]
        assert ("momentum" in hparams) == (hparams["optimizer"] == "sgd")
        assert assignment["log_scaled"] == ["learning_rate"]

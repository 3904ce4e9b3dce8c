"""Helpers for the API tests: specs, and a test double of a worker speaking the trial protocol.

Plain functions here (not in conftest.py, whose module name clashes with other test folders').
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

API = "/api/v1"


def grid_spec(name: str = "grid", values: int = 3, **overrides: Any) -> dict[str, Any]:
    """A grid sweep over one discrete hparam: `values` trials, in a known order."""
    data: dict[str, Any] = {
        "name": name,
        "model": "mlp",
        "dataset": "digits",
        "objective": {"metric": "val_accuracy", "goal": "maximize"},
        "hparams": {"units": {"type": "discrete", "values": list(range(1, values + 1))}, "batch_size": 64},
        "search": {"strategy": "grid"},
        "train": {"epochs": 2},
    }
    data.update(overrides)
    return data


def random_spec(name: str = "random", max_trials: int = 5, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": name,
        "model": "mlp",
        "dataset": "digits",
        "objective": {"metric": "val_loss", "goal": "minimize"},
        "hparams": {
            "units": {"type": "discrete", "values": [16, 32, 64]},
            "dropout": {"type": "real_interval", "min": 0.1, "max": 0.5},
            "learning_rate": {"type": "real_interval", "min": 1e-4, "max": 1e-1, "log": True},
        },
        "search": {"strategy": "random", "max_trials": max_trials, "seed": 7},
    }
    data.update(overrides)
    return data


class Worker:
    """A test double of a worker: speaks the trial protocol through a client, as one worker id.

    Each call on a trial carries the lease token of this worker's latest claim of it (`lease_token=`
    overrides it, to send a stale one).
    """

    def __init__(self, client: TestClient, worker_id: str, host: str = "test-host", gpu: str | None = None,
                 gpus: int = 1):
        self.client = client
        self.id = worker_id
        self.host = host
        self.gpu = gpu
        self.gpus = gpus
        self.tokens: dict[int, int] = {}

    def claim(self) -> dict[str, Any] | None:
        response = self.client.post(f"{API}/trials/claim", json={"worker_id": self.id, "host": self.host,
                                                                 "gpu": self.gpu, "gpus": self.gpus})
        if response.status_code == 204:
            assert response.content == b""
            return None
        assert response.status_code == 200, response.text
        assignment = response.json()
        self.tokens[assignment["trial_id"]] = assignment["lease_token"]
        return assignment

    def post(self, trial_id: int, action: str, **body: Any) -> Any:
        body = {"worker_id": self.id, "lease_token": self.tokens.get(trial_id, 1), **body}
        return self.client.post(f"{API}/trials/{trial_id}/{action}", json=body)

    def heartbeat(self, trial_id: int) -> Any:
        return self.post(trial_id, "heartbeat")

    def report(self, trial_id: int, epoch: int, **metrics: float) -> Any:
        return self.post(trial_id, "metrics", epoch=epoch, metrics=metrics)

    def complete(self, trial_id: int, **metrics: float) -> Any:
        return self.post(trial_id, "complete", metrics=metrics)

    def fail(self, trial_id: int, error: str = "boom", retryable: bool = False, **report: Any) -> Any:
        return self.post(trial_id, "fail", error=error, retryable=retryable, **report)

    def release(self, trial_id: int, reason: str = "shutting down", epochs_done: int = 0) -> Any:
        return self.post(trial_id, "release", reason=reason, epochs_done=epochs_done)

    def claim_id(self) -> int:
        """Claim, insisting on a trial; its id."""
        assignment = self.claim()
        assert assignment is not None, f"worker {self.id} got no trial"
        return assignment["trial_id"]


def create_sweep(client: TestClient, spec: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"{API}/sweeps", json=spec)
    assert response.status_code == 201, response.text
    return response.json()


def get_sweep(client: TestClient, sweep_id: int) -> dict[str, Any]:
    response = client.get(f"{API}/sweeps/{sweep_id}")
    assert response.status_code == 200, response.text
    return response.json()


def control(client: TestClient, sweep_id: int, action: str) -> Any:
    """POST /sweeps/{id}/{action} for pause, resume or cancel; the raw response."""
    return client.post(f"{API}/sweeps/{sweep_id}/{action}")


def list_workers(client: TestClient) -> dict[str, dict[str, Any]]:
    """GET /workers, by worker id."""
    response = client.get(f"{API}/workers")
    assert response.status_code == 200, response.text
    return {worker["id"]: worker for worker in response.json()["data"]}


def without_times(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A trial's history without each epoch's `reported_at`: the epochs and metrics a test compares."""
    return [{key: value for key, value in entry.items() if key != "reported_at"} for entry in history]


def get_trial(client: TestClient, trial_id: int) -> dict[str, Any]:
    response = client.get(f"{API}/trials/{trial_id}")
    assert response.status_code == 200, response.text
    return response.json()

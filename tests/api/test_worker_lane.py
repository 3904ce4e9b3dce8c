"""The worker lane answers claims and completions without the router, exactly as the routes do: the same
assignments, the same refusals, the same errors for every bad body, and still behind the token gate and the
body size limit."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from api_testing import API, grid_spec
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from api.claims.lane import WorkerLane

VOLATILE = {"lease_expires_at", "created_at", "started_at", "finished_at", "logdir", "checkpoint_dir"}
"""Fields that hold the time or the app's own folder: they differ between two apps by nature."""

WORKER = "worker-0123456789abcdef-WORKER"


def without_the_lane(app: FastAPI) -> FastAPI:
    """The same app answering everything through its router (the middleware stack is built on first use)."""
    app.user_middleware = [middleware for middleware in app.user_middleware if middleware.cls is not WorkerLane]
    return app


def comparable(response: Any) -> tuple[int, Any]:
    try:
        body = response.json()
    except ValueError:
        body = response.content
    if isinstance(body, dict):
        body = {name: value for name, value in body.items() if name not in VOLATILE}
    return response.status_code, body


def raw(content: bytes | str, content_type: str = "application/json") -> dict[str, Any]:
    return {"content": content, "headers": {"content-type": content_type}}


# One worker's session against a fresh sweep of 3 trials: every kind of claim and completion the lane
# takes, and every kind of body it must leave to the router.
SESSION: list[tuple[str, dict[str, Any]]] = [
    ("claim", {"json": {"worker_id": "w1", "host": "box", "gpu": "0"}}),
    ("claim", {"json": {"worker_id": "w1", "host": "box", "gpu": "0"}}),  # claiming again: the same trial
    ("1/complete", {"json": {"worker_id": "intruder", "lease_token": 2, "metrics": {"val_accuracy": 0.9}}}),  # 409
    ("1/complete", {"json": {"worker_id": "w1", "lease_token": 1, "metrics": {"val_accuracy": 0.9}}}),  # stale: 409
    ("1/complete", {"json": {"worker_id": "w1", "lease_token": 2, "metrics": {"val_accuracy": 0.9}}}),
    ("1/complete", {"json": {"worker_id": "w1", "lease_token": 2, "metrics": {"val_accuracy": 0.8}}}),  # a repeat
    ("1/complete", {"json": {"worker_id": "w1", "lease_token": 3, "metrics": {"val_accuracy": 0.9}}}),  # no longer held
    ("99/complete", {"json": {"worker_id": "w1", "lease_token": 1, "metrics": {}}}),  # no such trial: 404
    (f"{2**70}/complete", {"json": {"worker_id": "w1", "lease_token": 1, "metrics": {}}}),  # past 64 bits
    ("1/complete", {"json": {"worker_id": "w1", "metrics": {}}}),  # no lease token: 422
    ("claim", {"json": {"host": "box"}}),  # no worker_id
    ("claim", {"json": {"worker_id": "", "host": "box"}}),
    ("claim", {"json": {"worker_id": "w2", "host": "box", "surprise": 1}}),
    ("claim", raw("{not json")),
    ("claim", raw(b"\xff\xfe")),
    ("claim", raw('{"worker_id": "w2", "host": "box"}', "text/plain")),
    ("claim", raw('{"worker_id": "w2", "host": "box", "gpu": 1e999}')),
    ("2/complete", raw('{"worker_id": "w1", "lease_token": 1, "metrics": {"val_accuracy": NaN}}')),
    ("2/complete", raw('{"worker_id": "w1", "lease_token": 1, "metrics": {"val_accuracy": 1' + "0" * 30 + '}}')),
    ("claim", {"json": {"worker_id": "w2", "host": "box"}}),
    ("claim", {"json": {"worker_id": "w3", "host": "box"}}),
    ("claim", {"json": {"worker_id": "w4", "host": "box"}}),  # nothing left: 204
]


def test_every_answer_of_the_lane_is_the_routers_answer(settings: Settings, other_database_url: str,
                                                       make_client: Callable[..., TestClient]):
    lane = make_client(settings)
    router = TestClient(without_the_lane(create_app(Settings(**{**settings.model_dump(),
                                                                "database_url": other_database_url}))))
    with router:
        for client in (lane, router):
            assert client.post(f"{API}/sweeps", json=grid_spec(values=3)).status_code == 201

        for path, request in SESSION:
            through_lane = comparable(lane.post(f"{API}/trials/{path}", **request))
            through_router = comparable(router.post(f"{API}/trials/{path}", **request))
            assert through_lane == through_router, f"POST {path} {request}"

    statuses = [lane.post(f"{API}/trials/claim", json={"worker_id": "w1", "host": "box"}).status_code]
    assert statuses == [204]


def test_a_claim_through_the_lane_is_a_complete_assignment(client: TestClient):
    client.post(f"{API}/sweeps", json=grid_spec(values=1))

    answer = client.post(f"{API}/trials/claim", json={"worker_id": "w1", "host": "box"})

    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assignment = answer.json()
    assert (assignment["trial_id"], assignment["hparams"]["units"], assignment["attempt"]) == (1, 1, 1)
    assert assignment["number"] == 1 and assignment["logdir"].endswith("/1/trial-0001")
    assert assignment["checkpoint_dir"].endswith("/1/trial-0001/checkpoint")
    assert math.isclose(assignment["heartbeat_seconds"], settings_heartbeat(client))


def settings_heartbeat(client: TestClient) -> float:
    return client.app.state.context.policy.heartbeat.total_seconds()


@pytest.mark.sqlite_only
def test_the_lane_is_behind_the_token_gate_and_the_size_limit(client_with: Callable[..., TestClient]):
    secured = client_with(admin_token="admin-0123456789abcdef-ADMIN", worker_token=WORKER, max_body_bytes=4096)
    claim = {"worker_id": "w1", "host": "box"}

    assert secured.post(f"{API}/trials/claim", json=claim).status_code == 401
    assert secured.post(f"{API}/trials/claim", json=claim, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert secured.post(f"{API}/trials/claim", json={**claim, "host": "x" * 5000},
                        headers={"Authorization": f"Bearer {WORKER}"}).status_code == 413
    assert secured.post(f"{API}/trials/claim", json=claim,
                        headers={"Authorization": f"Bearer {WORKER}"}).status_code == 204

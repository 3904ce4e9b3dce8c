"""Valid JSON that no database or TensorBoard file can hold is a 422 at its path, never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_testing import API, Worker, create_sweep, grid_spec
from fastapi.testclient import TestClient


def post_raw(client: TestClient, path: str, text: str) -> Any:
    return client.post(API + path, content=text.encode(), headers={"content-type": "application/json"})


def spec_text(**replace: str) -> str:
    """A valid spec as JSON text, with placeholders swapped for raw (possibly invalid) JSON."""
    spec = grid_spec()
    spec["hparams"]["units"] = {"type": "discrete", "values": ["@VALUE@", 2.0]}
    spec["name"] = "@NAME@"
    text = json.dumps(spec)
    return text.replace('"@VALUE@"', replace.get("value", "1.0")).replace('"@NAME@"', replace.get("name", '"ok"'))


@pytest.mark.parametrize("value, rule", [("NaN", "finite"), ("Infinity", "finite"), ("-Infinity", "finite"),
                                         ("1" + "0" * 40, "64 bits"), ("-" + "9" * 30, "64 bits")])
def test_non_finite_numbers_and_huge_integers_are_422_at_their_path(client: TestClient, value: str, rule: str):
    response = post_raw(client, "/sweeps", spec_text(value=value))

    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "hparams", "units", "values", 0]
    assert rule in problem["msg"]
    assert client.get(f"{API}/sweeps").json()["count"] == 0


def test_lone_surrogates_are_422(client: TestClient):
    response = post_raw(client, "/sweeps", spec_text(name='"\\ud800"'))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "name"]

    key = post_raw(client, "/sweeps", '{"\\udfff": 1}')
    assert key.status_code == 422 and key.json()["detail"][0]["loc"] == ["body"]


def test_the_largest_64_bit_integer_is_still_accepted(client: TestClient):
    spec = grid_spec()
    spec["search"] = {"strategy": "grid", "seed": 2**63 - 1}
    assert create_sweep(client, spec)["spec"]["search"]["seed"] == 2**63 - 1


def test_worker_messages_are_guarded_too(client: TestClient):
    create_sweep(client, grid_spec())
    trial_id = Worker(client, "w").claim()["trial_id"]  # type: ignore[index]

    claim = post_raw(client, "/trials/claim", '{"worker_id": "\\ud800", "host": "h"}')
    metrics = post_raw(client, f"/trials/{trial_id}/metrics", '{"worker_id": "w", "epoch": 0, "metrics": {"a": NaN}}')
    fail = post_raw(client, f"/trials/{trial_id}/fail", '{"worker_id": "w", "error": "\\ud800"}')

    assert [r.status_code for r in (claim, metrics, fail)] == [422, 422, 422]
    assert metrics.json()["detail"][0]["loc"] == ["body", "metrics", "a"]
    assert client.get(f"{API}/trials/{trial_id}").json()["state"] == "running"


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "1" * 5000, '{"a": ' * 3000 + "1" + "}" * 3000,
                                  "\"\\ud800\"", "null", "", "{", '{"name": "x"}garbage'])
def test_pathological_bodies_are_refused_without_a_server_error(client: TestClient, text: str):
    for path in ("/sweeps", "/trials/claim", "/trials/1/complete"):
        response = post_raw(client, path, text)
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text[:300])


def test_validation_errors_echoing_odd_input_still_answer_json(client: TestClient):
    # Too long (so echoed back in `input`) and holding a character that must be escaped correctly.
    response = client.post(f"{API}/trials/claim", json={"worker_id": "é" * 300, "host": "h"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "worker_id"]

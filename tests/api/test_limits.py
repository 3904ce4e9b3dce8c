"""Limits: a request body over the size limit is 413 naming its size and the limit, with or without a
Content-Length; a spec over a spec limit is 422 at the field, naming the limit."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from api_testing import API, create_sweep, grid_spec
from fastapi.testclient import TestClient

from api.server import RunningServer
from sweeper._domains import MAX_DISCRETE_VALUES, MAX_HPARAMS, MAX_TEXT_LENGTH
from sweeper._spec import MAX_NAME_LENGTH

LIMIT = 1_048_576


def _padded_spec(size: int) -> bytes:
    """A valid spec's JSON, padded with spaces to exactly `size` bytes."""
    body = json.dumps(grid_spec()).encode()
    return body + b" " * (size - len(body))


def _chunks(body: bytes, size: int = 65_536) -> Iterator[bytes]:
    # A generator body goes out chunked, with no Content-Length.
    for start in range(0, len(body), size):
        yield body[start:start + size]


def test_a_body_over_the_limit_is_413_naming_its_size_and_the_limit(client: TestClient):
    response = client.post(f"{API}/sweeps", content=_padded_spec(LIMIT + 1),
                           headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert response.json() == {"detail": f"request body is {LIMIT + 1} bytes; the limit is {LIMIT}"}
    assert client.get(f"{API}/sweeps").json()["count"] == 0


def test_a_body_at_the_limit_is_read(client: TestClient):
    response = client.post(f"{API}/sweeps", content=_padded_spec(LIMIT), headers={"content-type": "application/json"})

    assert response.status_code == 201, response.text


def test_a_chunked_body_without_a_length_is_counted_too(client: TestClient):
    too_big = client.post(f"{API}/sweeps/validate", content=_chunks(_padded_spec(3 * LIMIT)),
                          headers={"content-type": "application/json"})
    small = client.post(f"{API}/sweeps/validate", content=_chunks(_padded_spec(200_000), size=1000),
                        headers={"content-type": "application/json"})

    assert too_big.status_code == 413
    assert too_big.json() == {"detail": f"request body is {3 * LIMIT} bytes; the limit is {LIMIT}"}
    assert small.status_code == 200, small.text
    assert small.json()["total_trials"] == 3


def test_the_limit_is_a_setting(client_with: Callable[..., TestClient]):
    client = client_with(max_body_bytes=4096)

    response = client.post(f"{API}/trials/claim", content=b"{" + b" " * 5000 + b"}",
                           headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert response.json() == {"detail": "request body is 5002 bytes; the limit is 4096"}


@pytest.fixture
def server(start_server: Callable[..., RunningServer]) -> RunningServer:
    return start_server(max_body_bytes=65_536)


def test_a_real_server_answers_413_to_an_oversized_body_either_way(server: RunningServer):
    body = _padded_spec(200_000)
    with httpx.Client(base_url=server.url) as http:
        declared = http.post(f"{API}/sweeps", content=body, headers={"content-type": "application/json"})
        chunked = http.post(f"{API}/sweeps", content=_chunks(body), headers={"content-type": "application/json"})
        after = http.get(f"{API}/sweeps")

    assert (declared.status_code, chunked.status_code) == (413, 413)
    assert declared.json() == chunked.json() == {"detail": "request body is 200000 bytes; the limit is 65536"}
    assert after.json()["count"] == 0


def _with_hparams(**hparams: Any) -> dict[str, Any]:
    spec = grid_spec()
    spec["hparams"].update(hparams)
    return spec


SPEC_LIMITS = {
    "hparams": ({f"h{i}": 1 for i in range(MAX_HPARAMS)},
                ["body", "hparams"], f"at most {MAX_HPARAMS} hparams, but got {MAX_HPARAMS + 2}"),
    "discrete values": ({"units": {"type": "discrete", "values": list(range(MAX_DISCRETE_VALUES + 1))}},
                        ["body", "hparams", "units", "values"],
                        f"at most {MAX_DISCRETE_VALUES} values, but got {MAX_DISCRETE_VALUES + 1}"),
    "a string value": ({"activation": {"type": "discrete", "values": ["relu", "x" * (MAX_TEXT_LENGTH + 1)]}},
                       ["body", "hparams", "activation", "values", 1],
                       f"must be at most {MAX_TEXT_LENGTH} characters, but got {MAX_TEXT_LENGTH + 1}"),
    "condition values": ({"momentum": {"type": "fixed", "value": 0.9,
                                       "when": {"units": list(range(MAX_DISCRETE_VALUES + 1))}}},
                         ["body", "hparams", "momentum", "when", "units"],
                         f"at most {MAX_DISCRETE_VALUES} values, but got {MAX_DISCRETE_VALUES + 1}"),
}


@pytest.mark.parametrize("hparams, loc, message", SPEC_LIMITS.values(), ids=SPEC_LIMITS.keys())
def test_a_spec_over_a_limit_is_422_at_the_field_naming_the_limit(client: TestClient, hparams: dict[str, Any],
                                                                   loc: list[Any], message: str):
    response = client.post(f"{API}/sweeps", json=_with_hparams(**hparams))

    assert response.status_code == 422
    assert {"loc": loc, "msg": message, "type": "value_error"} in response.json()["detail"]


def test_a_sweep_name_over_the_limit_is_422_at_the_name(client: TestClient):
    response = client.post(f"{API}/sweeps", json=grid_spec(name="n" * (MAX_NAME_LENGTH + 1)))

    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "name"] and f"at most {MAX_NAME_LENGTH} characters" in problem["msg"]
    assert create_sweep(client, grid_spec(name="n" * MAX_NAME_LENGTH))["name"] == "n" * MAX_NAME_LENGTH


def test_a_json_body_that_is_not_utf8_is_422_like_any_malformed_json(client: TestClient):
    # Found by the OpenAPI fuzzing: FastAPI answered an undocumented 400.
    response = client.post(f"{API}/trials/claim", content=b'{"worker_id": "\xff"}',
                           headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert "UTF-8" in response.json()["detail"][0]["msg"]

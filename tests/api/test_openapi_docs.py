"""The OpenAPI document at /docs describes every endpoint: a summary, a description, the success answer's
schema, every error it can answer with a schema, and an example of every request body."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import is_public
from api.origin_guard import STATE_CHANGING
from api.settings import Settings

DOCUMENT = create_app(Settings(database_url="sqlite://")).openapi()
COMPONENTS = DOCUMENT["components"]["schemas"]
OPERATIONS = [(method, path, operation) for path, operations in DOCUMENT["paths"].items()
              for method, operation in operations.items()]
WORKER_PROTOCOL = {("post", "/api/v1/trials/claim"), *(("post", f"/api/v1/trials/{{trial_id}}/{action}")
                                                       for action in ("heartbeat", "metrics", "complete", "fail",
                                                                      "release"))}
"""The calls a worker token may make (api.auth's WorkerDep); GET /api/v1/session takes either token too."""
EITHER_TOKEN = WORKER_PROTOCOL | {("get", "/api/v1/session")}


def _ids(operation: tuple[str, str, Any]) -> str:
    return f"{operation[0].upper()} {operation[1]}"


def _schema(content: dict[str, Any]) -> dict[str, Any]:
    schema = content.get("schema", {})
    return COMPONENTS[schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema


@pytest.mark.parametrize("method, path, operation", OPERATIONS, ids=[_ids(o) for o in OPERATIONS])
def test_every_operation_is_summarised_described_and_its_success_has_a_schema(method: str, path: str,
                                                                               operation: dict[str, Any]):
    assert operation.get("summary", "").strip(), "no summary"
    assert len(operation.get("description", "").strip()) > 20, "no description"
    successes = {code: answer for code, answer in operation["responses"].items() if code.startswith("2")}
    assert successes, "no success answer"
    for code, answer in successes.items():
        assert answer.get("description"), code
        if code != "204":
            assert answer.get("content") and all(media.get("schema") for media in answer["content"].values()), code


@pytest.mark.parametrize("method, path, operation", OPERATIONS, ids=[_ids(o) for o in OPERATIONS])
def test_every_error_an_operation_can_answer_is_documented_with_its_schema(method: str, path: str,
                                                                            operation: dict[str, Any]):
    expected = set()
    if operation.get("parameters") or "requestBody" in operation:
        expected.add("422")
    if "{" in path:
        expected.add("404")
    if "requestBody" in operation:
        expected.add("413")
    if not is_public(method.upper(), path):
        expected |= {"401"} if (method, path) in EITHER_TOKEN else {"401", "403"}
    expected.add("400")  # any request whose Host names none of the server's names (api.origin_guard)
    if method.upper() in STATE_CHANGING:
        expected.add("403")  # a state-changing request from another origin's page, public or not
    responses = operation["responses"]

    assert expected <= set(responses), f"undocumented: {sorted(expected - set(responses))}"
    for code in expected:
        schema = _schema(responses[code]["content"]["application/json"])
        assert "detail" in schema["properties"], code


@pytest.mark.parametrize("method, path, operation", [o for o in OPERATIONS if "requestBody" in o[2]],
                         ids=[_ids(o) for o in OPERATIONS if "requestBody" in o[2]])
def test_every_request_body_has_an_example(method: str, path: str, operation: dict[str, Any]):
    for media_type, content in operation["requestBody"]["content"].items():
        examples = content.get("examples") or content.get("example") or _schema(content).get("examples")
        assert examples, f"{media_type} has no example"


def test_errors_have_one_shape_the_detail(client: TestClient):
    assert set(COMPONENTS["ErrorMessage"]["properties"]) == {"detail"}
    assert COMPONENTS["ValidationErrorMessage"]["properties"]["detail"]["type"] == "array"
    for response in (client.get("/api/v1/sweeps/5"), client.get("/nowhere"), client.delete("/api/v1/sweeps"),
                     client.get("/api/v1/sweeps", params={"limit": 0})):
        assert set(response.json()) == {"detail"}, response.text


def test_yaml_bodies_are_documented_beside_json():
    for path in ("/api/v1/sweeps", "/api/v1/sweeps/validate"):
        content = DOCUMENT["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) >= {"application/json", "application/yaml"}
        assert "415" in DOCUMENT["paths"][path]["post"]["responses"]


def test_the_docs_page_serves_this_document(client: TestClient):
    assert client.get("/docs").status_code == 200
    assert client.get("/openapi.json").json() == client.app.openapi()  # type: ignore[attr-defined]


def test_even_a_bug_answers_in_the_one_error_shape(settings: Settings):
    app = create_app(settings)

    @app.get("/crash")
    def crash() -> None:
        raise RuntimeError("a bug, with internals the client must not see")

    response = TestClient(app, raise_server_exceptions=False).get("/crash")

    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}

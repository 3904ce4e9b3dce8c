"""Tokens: 401 without one on every route but the public ones, 403 for the worker token outside the worker
protocol, the web page's cookie login, constant-time comparison, the settings' rules, and the client.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.routing import Mount

from api.server import start_in_thread
from api.settings import Settings
from api_testing import API, Worker, create_sweep, get_sweep, grid_spec
from sweeper.client import AuthError, Client

ADMIN = "admin-0123456789abcdef-ADMIN"
WORKER = "worker-0123456789abcdef-WORKER"

# The contract, written out here rather than read from api.auth, so a change to either is a decision.
PUBLIC = {("GET", "/healthz"), ("GET", "/"), ("GET", "/static/x"), ("POST", f"{API}/session"),
          ("DELETE", f"{API}/session")}
WORKER_PROTOCOL = {("POST", f"{API}/trials/claim"), ("GET", f"{API}/session"),
                   *{("POST", f"{API}/trials/1/{action}") for action in
                     ("heartbeat", "metrics", "complete", "fail", "release")}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def secured(client_with: Callable[..., TestClient]) -> TestClient:
    """A client (no token of its own) of an app with both tokens configured."""
    return client_with(admin_token=ADMIN, worker_token=WORKER)


def using(client: TestClient, token: str, **options: Any) -> TestClient:
    """Another client of the same running app, sending `token` on every request."""
    return TestClient(client.app, headers=bearer(token), **options)


def requests_to_every_route(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) for each method of each route the app serves, mounts and docs included, with every
    path parameter set to 1: what a caller could reach, whoever added the route."""
    found = []
    for route in iter_route_contexts(app.routes):
        path = re.sub(r"\{[^}]*\}", "1", route.path)
        if isinstance(route.original_route, Mount):
            found.append(("GET", f"{path}/x"))
            continue
        found.extend((method, path) for method in sorted(route.methods))
    return found


# -- who may call what -----------------------------------------------------------------------------

def test_without_a_token_every_route_answers_401_except_the_public_ones(secured: TestClient) -> None:
    answered_public = set()
    requests = requests_to_every_route(secured.app)
    for method, path in requests:
        response = secured.request(method, path)
        if (method, path) in PUBLIC:
            answered_public.add((method, path))
            assert response.status_code != 401, (method, path)
            continue
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["www-authenticate"] == "Bearer"
        if method != "HEAD":
            assert response.json()["detail"].startswith("this server needs a token"), (method, path)

    assert answered_public == PUBLIC  # every public route exists: the allow-list holds nothing stale
    # The docs, the worker protocol, the web page's data, TensorBoard: all there, all refused.
    assert {("GET", "/docs"), ("GET", "/openapi.json"), ("POST", f"{API}/trials/claim"), ("GET", f"{API}/sweeps"),
            ("GET", "/tensorboard/1/1"), ("POST", f"{API}/sweeps/1/tensorboard")} <= set(requests)


def test_a_path_no_route_serves_is_401_too_so_what_exists_is_not_disclosed(secured: TestClient) -> None:
    assert secured.get("/nothing/here").status_code == 401
    assert secured.get(f"{API}/nothing").status_code == 401
    assert secured.get("/nothing/here", headers=bearer(ADMIN)).status_code == 404


def test_a_wrong_token_is_401_whichever_token_it_resembles(secured: TestClient) -> None:
    near_admin = secured.get(f"{API}/sweeps", headers=bearer(ADMIN[:-1] + "x"))
    near_worker = secured.get(f"{API}/sweeps", headers=bearer(WORKER[:-1] + "x"))
    as_cookie = TestClient(secured.app, cookies={"sweeper_session": ADMIN + "x"}).get(f"{API}/sweeps")
    no_session = TestClient(secured.app, cookies={"sweeper_session": "x" * 43}).get(f"{API}/sweeps")

    for response in (near_admin, near_worker, as_cookie, no_session):
        assert response.status_code == 401
        assert response.json() == {"detail": "invalid token"}
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_worker_token_on_an_admin_endpoint_gets_403(secured: TestClient) -> None:
    worker = using(secured, WORKER)
    refused = 0
    for method, path in requests_to_every_route(secured.app):
        if (method, path) in PUBLIC:
            continue
        response = worker.request(method, path)
        if (method, path) in WORKER_PROTOCOL:
            assert response.status_code not in (401, 403), (method, path, response.text)
        else:
            assert response.status_code == 403, (method, path, response.status_code)
            if method != "HEAD":
                assert "needs the admin token" in response.json()["detail"]
            refused += 1
    assert refused >= 15  # sweeps, trials, workers, docs, TensorBoard, ...


def test_the_admin_token_opens_every_route(secured: TestClient) -> None:
    admin = using(secured, ADMIN)
    for method, path in requests_to_every_route(secured.app):
        response = admin.request(method, path)
        assert response.status_code not in (401, 403), (method, path, response.text)


def test_the_worker_token_is_enough_for_the_whole_worker_protocol(secured: TestClient) -> None:
    sweep = create_sweep(using(secured, ADMIN), grid_spec(values=3))
    worker = Worker(using(secured, WORKER), "w1")

    first = worker.claim_id()
    assert worker.heartbeat(first).json() == {"action": "continue"}
    assert worker.report(first, 0, val_accuracy=0.5).status_code == 200
    assert worker.complete(first, val_accuracy=0.6).status_code == 200
    second = worker.claim_id()
    assert worker.fail(second, error="boom").status_code == 200
    third = worker.claim_id()
    assert worker.release(third).status_code == 200
    assert worker.claim_id() == third  # released: pending again, and handed out again
    assert worker.complete(third, val_accuracy=0.7).status_code == 200

    counts = get_sweep(using(secured, ADMIN), sweep["id"])["trial_counts"]
    assert (counts["completed"], counts["failed"]) == (2, 1)


def test_the_worker_token_cannot_read_what_it_reported(secured: TestClient) -> None:
    create_sweep(using(secured, ADMIN), grid_spec())
    worker = Worker(using(secured, WORKER), "w1")
    trial_id = worker.claim_id()

    assert worker.client.get(f"{API}/trials/{trial_id}").status_code == 403
    assert worker.client.get(f"{API}/sweeps").status_code == 403
    assert worker.client.post(f"{API}/sweeps", json=grid_spec()).status_code == 403
    assert worker.client.post(f"{API}/sweeps/1/cancel").status_code == 403


def test_the_admin_token_may_speak_the_worker_protocol_too(secured: TestClient) -> None:
    admin = using(secured, ADMIN)
    create_sweep(admin, grid_spec())

    assert Worker(admin, "admin-as-worker").claim() is not None


def test_with_no_token_configured_auth_is_off(client: TestClient) -> None:
    assert client.get(f"{API}/sweeps").status_code == 200
    assert client.get(f"{API}/session").json() == {"role": "open"}
    # Any token, even a wrong one, changes nothing: there is nothing to check it against.
    assert client.get(f"{API}/sweeps", headers=bearer("whatever")).status_code == 200
    login = client.post(f"{API}/session", json={"token": "whatever"})
    assert login.status_code == 204 and "set-cookie" not in login.headers


# -- the web page's cookie -------------------------------------------------------------------------

def test_logging_in_sets_an_http_only_same_site_strict_cookie_that_opens_the_api(secured: TestClient) -> None:
    assert secured.get(f"{API}/sweeps").status_code == 401

    login = secured.post(f"{API}/session", json={"token": ADMIN})

    assert login.status_code == 204
    attributes = _cookie_attributes(login.headers["set-cookie"])
    session_id = attributes.pop("sweeper_session")
    assert attributes == {"httponly": "", "path": "/", "samesite": "strict"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", session_id)  # a random session id, not the token
    assert secured.get(f"{API}/sweeps").status_code == 200  # the client's cookie jar sends it back
    assert secured.get(f"{API}/session").json() == {"role": "admin"}


def test_the_cookie_is_secure_when_the_page_came_over_https(secured: TestClient) -> None:
    login = using(secured, "", base_url="https://testserver").post(f"{API}/session", json={"token": ADMIN})

    assert login.status_code == 204
    assert _cookie_attributes(login.headers["set-cookie"])["secure"] == ""


def test_a_wrong_token_at_login_is_401_and_sets_no_cookie(secured: TestClient) -> None:
    for wrong in (ADMIN + "x", WORKER[:-1], "x" * 30):
        login = secured.post(f"{API}/session", json={"token": wrong})

        assert login.status_code == 401
        assert login.json() == {"detail": "invalid token"}
        assert "set-cookie" not in login.headers
    assert secured.get(f"{API}/sweeps").status_code == 401


def test_a_worker_token_logs_in_as_a_worker(secured: TestClient) -> None:
    assert secured.post(f"{API}/session", json={"token": WORKER}).status_code == 204

    assert secured.get(f"{API}/session").json() == {"role": "worker"}
    assert secured.get(f"{API}/sweeps").status_code == 403


def test_logging_out_clears_the_cookie_even_a_stale_one(secured: TestClient) -> None:
    secured.post(f"{API}/session", json={"token": ADMIN})

    logout = secured.delete(f"{API}/session")

    assert logout.status_code == 204
    attributes = _cookie_attributes(logout.headers["set-cookie"])
    assert attributes["max-age"] == "0" and attributes["httponly"] == "" and attributes["samesite"] == "strict"
    assert secured.get(f"{API}/sweeps").status_code == 401
    # A cookie from before the tokens changed names no valid session, and can still be dropped.
    stale = TestClient(secured.app, cookies={"sweeper_session": "from-an-old-server-0000"}).delete(f"{API}/session")
    assert stale.status_code == 204
    assert _cookie_attributes(stale.headers["set-cookie"])["max-age"] == "0"


def test_the_bearer_header_wins_over_the_cookie(secured: TestClient) -> None:
    secured.post(f"{API}/session", json={"token": ADMIN})

    assert secured.get(f"{API}/sweeps", headers=bearer(WORKER)).status_code == 403
    assert secured.get(f"{API}/sweeps", headers=bearer("not-the-token-at-all")).status_code == 401
    assert secured.get(f"{API}/sweeps").status_code == 200


def test_tokens_are_compared_in_constant_time(secured: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    guess = "guess-0123456789abcdef"

    assert secured.get(f"{API}/sweeps", headers=bearer(guess)).status_code == 401
    assert secured.post(f"{API}/session", json={"token": guess}).status_code == 401

    # Both tokens, every time, as bytes (compare_digest on str accepts ASCII only).
    assert compared.count((guess.encode(), ADMIN.encode())) == 2
    assert compared.count((guess.encode(), WORKER.encode())) == 2
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in compared)


def _cookie_attributes(set_cookie: str) -> dict[str, str]:
    """'a=b; HttpOnly; Path=/' -> {'a': 'b', 'httponly': '', 'path': '/'}; attribute names lowercased."""
    attributes = {}
    for index, part in enumerate(part.strip() for part in set_cookie.split(";")):
        name, _, value = part.partition("=")
        if name.lower() == "expires":
            continue
        attributes[name if index == 0 else name.lower()] = value.lower() if name.lower() == "samesite" else value
    return attributes


# -- the settings' rules ---------------------------------------------------------------------------

@pytest.mark.parametrize(("tokens", "rule"), [
    ({"worker_token": WORKER}, "worker_token needs admin_token too"),
    ({"admin_token": ADMIN, "worker_token": ADMIN}, "admin_token and worker_token must differ"),
    ({"admin_token": "fifteen-chars-x"}, "admin_token: must be at least 16 characters, but got 15"),
    ({"admin_token": ADMIN, "worker_token": "short"}, "worker_token: must be at least 16 characters, but got 5"),
    ({"admin_token": "has spaces in it, sixteen+"}, "admin_token: may hold only letters, digits and"),
    ({"admin_token": "ünïcødé-token-0123456789"}, "admin_token: may hold only letters, digits and"),
])
def test_tokens_that_break_a_rule_are_refused_with_the_rule(tokens: dict[str, str], rule: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**tokens)

    assert rule in _problems(caught.value)
    for token in tokens.values():
        assert token not in str(caught.value)  # refused, and never printed


def test_a_token_of_sixteen_bearer_characters_is_accepted() -> None:
    settings = Settings(admin_token="Aa0-._~+/=Aa0-._", worker_token="x" * 16)

    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == "Aa0-._~+/=Aa0-._"
    assert ADMIN not in repr(Settings(admin_token=ADMIN))


def test_tokens_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPER_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("SWEEPER_WORKER_TOKEN", WORKER)

    settings = Settings()

    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == ADMIN
    assert settings.worker_token is not None and settings.worker_token.get_secret_value() == WORKER


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.org", "my-gpu-box", ""])
def test_binding_a_non_loopback_address_without_an_admin_token_is_refused(host: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(host=host)

    problem = _problems(caught.value)
    assert f"host {host!r} is not a loopback address, and no admin_token is set" in problem
    assert "SWEEPER_ADMIN_TOKEN" in problem and "or bind 127.0.0.1" in problem
    assert Settings(host=host, admin_token=ADMIN).host == host  # with a token it may


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "LOCALHOST", "::1", "[::1]",
                                  "::ffff:127.0.0.1"])
def test_a_loopback_address_needs_no_token(host: str) -> None:
    assert Settings(host=host).admin_token is None


def _problems(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}".removeprefix(": ")
                     .replace("Value error, ", "") for problem in error.errors(include_input=False))


# -- the client ------------------------------------------------------------------------------------

@pytest.fixture
def secured_server(settings: Settings) -> Iterator[str]:
    """A real uvicorn server with both tokens; its URL."""
    server = start_in_thread(Settings(**{**settings.model_dump(), "port": 0, "admin_token": ADMIN,
                                         "worker_token": WORKER}))
    yield server.url
    server.stop()


def test_a_client_without_a_token_gets_an_auth_error_at_once_that_says_how_to_pass_one(secured_server: str) -> None:
    # Retried like a 5xx, a 401 would take seconds here; an AuthError is never retried.
    with Client(secured_server, retries=3, backoff=5.0) as client:
        started = time.monotonic()
        with pytest.raises(AuthError) as caught:
            client.list_sweeps()
        elapsed = time.monotonic() - started

    assert elapsed < 2.0
    assert caught.value.status_code == 401
    assert "this server needs a token" in str(caught.value)
    assert "--token" in str(caught.value) and "SWEEPER_TOKEN" in str(caught.value)


def test_a_client_with_the_worker_token_is_told_a_read_needs_the_admin_token(secured_server: str) -> None:
    with Client(secured_server, retries=3, backoff=5.0, token=WORKER) as client:
        assert client.session() == {"role": "worker"}
        with pytest.raises(AuthError) as caught:
            client.get_sweep(1)

    assert caught.value.status_code == 403
    assert "pass the admin token with --token or set SWEEPER_TOKEN" in str(caught.value)


def test_a_client_with_the_admin_token_sends_it_as_a_bearer_header(secured_server: str) -> None:
    with Client(secured_server, token=ADMIN) as client:
        sweep = client.create_sweep(grid_spec())
        assert client.get_sweep(sweep["id"])["name"] == "grid"
        assert client.session() == {"role": "admin"}
        assert ADMIN not in repr(client)


# -- no answer carries a token ---------------------------------------------------------------------


@pytest.mark.parametrize("body", [{"token": ADMIN + "x" * 5000}, {"tokn": ADMIN}, {"token": ADMIN, "remember": True},
                                  [ADMIN]])
def test_a_refused_login_never_echoes_what_was_sent(secured: TestClient, body: Any) -> None:
    # A 422 shows its input by default: a token sent with a typo would land in logs and proxies' error pages.
    answer = secured.post(f"{API}/session", json=body)

    assert answer.status_code == 422, answer.text
    assert ADMIN not in answer.text
    assert answer.json()["detail"][0]["loc"][0] == "body"  # still says what is wrong


def test_a_wrong_method_on_any_route_is_405_naming_the_allowed_ones(client: TestClient) -> None:
    # /sweeps/validate and /trials/claim once matched GET /sweeps/{id} and GET /trials/{id}: a 422 about an id.
    routes = requests_to_every_route(client.app)
    post_only = {path for method, path in routes if method == "POST"} - {path for method, path in routes
                                                                         if method == "GET"}
    assert f"{API}/trials/claim" in post_only and f"{API}/sweeps/validate" in post_only
    for path in sorted(post_only):
        answer = client.get(path)
        assert answer.status_code == 405, (path, answer.status_code, answer.text)
        assert answer.headers["allow"] == "POST", path

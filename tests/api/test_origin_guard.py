"""Requests a web page of another origin could make the browser send: the origin check (cross-site request
forgery) and the Host check (DNS rebinding), as raw requests with forged headers.

The clients here reach the app as http://127.0.0.1:8000, the server's own origin for these tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from typer.testing import CliRunner

from api.settings import Settings
from api_testing import API, create_sweep, get_sweep, grid_spec

pytestmark = pytest.mark.sqlite_only  # the checks come before any route: one database backend is enough

ADMIN = "admin-0123456789abcdef-ADMIN"
WORKER = "worker-0123456789abcdef-WORKER"
OWN = "http://127.0.0.1:8000"
EVIL = "https://evil.example"
TEXT_PLAIN = {"content-type": "text/plain"}
"""What a cross-site form (enctype=text/plain) sends: no preflight, so the browser just sends it."""


def at_own_origin(client: TestClient, **options: Any) -> TestClient:
    """Another client of the same app, reaching it as http://127.0.0.1:8000 (Host: 127.0.0.1:8000)."""
    return TestClient(client.app, base_url=OWN, **options)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def open_app(client_with: Callable[..., TestClient]) -> TestClient:
    """No token configured (the laptop default), answering only its own names."""
    return at_own_origin(client_with(allowed_hosts=()))


@pytest.fixture
def secured(client_with: Callable[..., TestClient]) -> TestClient:
    """Both tokens configured; no client token of its own."""
    return at_own_origin(client_with(admin_token=ADMIN, worker_token=WORKER, allowed_hosts=()))


@pytest.fixture
def logged_in(secured: TestClient) -> TestClient:
    """A browser-like client holding the web page's login cookie."""
    login = secured.post(f"{API}/session", json={"token": ADMIN}, headers={"Origin": OWN})
    assert login.status_code == 204, login.text
    assert secured.cookies, "the login set no cookie"
    return secured


def running_sweep(client: TestClient) -> int:
    sweep: dict[str, Any] = create_sweep(client, grid_spec())
    assert sweep["status"] == "running"
    return int(sweep["id"])


def status_of(client: TestClient, sweep_id: int) -> str:
    return str(get_sweep(client, sweep_id)["status"])


# -- cookie-authenticated requests -----------------------------------------------------------------

@pytest.mark.parametrize("action", ["cancel", "pause"])
def test_a_cookie_request_from_another_origin_is_refused_and_changes_nothing(logged_in: TestClient,
                                                                             action: str) -> None:
    sweep_id = running_sweep(logged_in)
    forged = logged_in.post(f"{API}/sweeps/{sweep_id}/{action}", content=b"x=1",
                            headers={**TEXT_PLAIN, "Origin": EVIL})
    assert forged.status_code == 403, forged.text
    detail = forged.json()["detail"]
    assert EVIL in detail and OWN in detail and "Authorization: Bearer" in detail
    assert status_of(logged_in, sweep_id) == "running"


@pytest.mark.parametrize("origin", ["http://127.0.0.1:9000",  # another port of the same host: same site
                                    "http://sub.127.0.0.1.example:8000", "https://127.0.0.1:8000",
                                    "http://localhost:8000", "null"])
def test_only_the_exact_origin_counts_not_the_site_nor_another_port_or_scheme(logged_in: TestClient,
                                                                              origin: str) -> None:
    sweep_id = running_sweep(logged_in)
    forged = logged_in.post(f"{API}/sweeps/{sweep_id}/cancel", headers={"Origin": origin})
    assert forged.status_code == 403, forged.text
    assert repr(origin) in forged.json()["detail"]
    assert status_of(logged_in, sweep_id) == "running"


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_every_state_changing_method_is_checked(logged_in: TestClient, method: str) -> None:
    refused = logged_in.request(method, f"{API}/sweeps/1", headers={"Origin": EVIL})
    assert refused.status_code == 403, refused.text


def test_a_same_origin_request_from_the_page_passes(logged_in: TestClient) -> None:
    sweep_id = running_sweep(logged_in)
    paused = logged_in.post(f"{API}/sweeps/{sweep_id}/pause", headers={"Origin": OWN})
    assert paused.status_code == 200, paused.text
    assert status_of(logged_in, sweep_id) == "paused"


def test_the_default_port_is_the_same_origin_written_either_way(open_app: TestClient) -> None:
    at_80 = TestClient(open_app.app, base_url="http://127.0.0.1")
    sweep_id = running_sweep(at_80)
    paused = at_80.post(f"{API}/sweeps/{sweep_id}/pause", headers={"Origin": "http://127.0.0.1:80"})
    assert paused.status_code == 200, paused.text
    resumed = at_80.post(f"{API}/sweeps/{sweep_id}/resume", headers={"Origin": "HTTP://127.0.0.1"})
    assert resumed.status_code == 200, resumed.text


def test_the_referer_is_checked_when_there_is_no_origin(logged_in: TestClient) -> None:
    sweep_id = running_sweep(logged_in)
    forged = logged_in.post(f"{API}/sweeps/{sweep_id}/cancel", headers={"Referer": f"{EVIL}/attack.html?x=1"})
    assert forged.status_code == 403, forged.text
    assert repr(EVIL) in forged.json()["detail"] and "Referer" in forged.json()["detail"]
    assert status_of(logged_in, sweep_id) == "running"
    own_page = logged_in.post(f"{API}/sweeps/{sweep_id}/pause", headers={"Referer": f"{OWN}/#sweep/{sweep_id}"})
    assert own_page.status_code == 200, own_page.text


def test_the_origin_wins_over_the_referer(logged_in: TestClient) -> None:
    sweep_id = running_sweep(logged_in)
    forged = logged_in.post(f"{API}/sweeps/{sweep_id}/cancel", headers={"Origin": EVIL, "Referer": f"{OWN}/"})
    assert forged.status_code == 403, forged.text


def test_a_cross_origin_login_is_refused_too(secured: TestClient) -> None:
    login = secured.post(f"{API}/session", json={"token": ADMIN}, headers={"Origin": EVIL})
    assert login.status_code == 403, login.text
    assert not secured.cookies


def test_reads_need_no_origin_check(logged_in: TestClient) -> None:
    # The browser's same-origin policy keeps another origin from reading the answer.
    assert logged_in.get(f"{API}/sweeps", headers={"Origin": EVIL}).status_code == 200


# -- bearer tokens: programs, workers, the CLI -----------------------------------------------------

def test_a_bearer_token_needs_no_origin(secured: TestClient) -> None:
    admin = at_own_origin(secured, headers=bearer(ADMIN))
    sweep_id = running_sweep(admin)
    assert admin.post(f"{API}/sweeps/{sweep_id}/pause").status_code == 200
    # A browser never sends the header cross-origin without a CORS preflight this server refuses, so an
    # Origin beside it is not a forgery.
    assert admin.post(f"{API}/sweeps/{sweep_id}/resume", headers={"Origin": EVIL}).status_code == 200
    worker = at_own_origin(secured, headers=bearer(WORKER))
    claimed = worker.post(f"{API}/trials/claim", json={"worker_id": "w1", "host": "h"}, headers={"Origin": EVIL})
    assert claimed.status_code == 200, claimed.text


def test_with_a_cookie_and_no_origin_nor_referer_the_request_passes(logged_in: TestClient) -> None:
    # Not a browser: every browser sends Origin on a cross-origin POST.
    sweep_id = running_sweep(logged_in)
    assert logged_in.post(f"{API}/sweeps/{sweep_id}/pause").status_code == 200


# -- no token configured ---------------------------------------------------------------------------

def test_without_tokens_a_cross_origin_request_is_refused(open_app: TestClient) -> None:
    sweep_id = running_sweep(open_app)
    forged = open_app.post(f"{API}/sweeps/{sweep_id}/cancel", content=b"", headers={**TEXT_PLAIN, "Origin": EVIL})
    assert forged.status_code == 403, forged.text
    assert EVIL in forged.json()["detail"]
    created = open_app.post(f"{API}/sweeps", content=b'{"name": "x"}', headers={**TEXT_PLAIN, "Origin": EVIL})
    assert created.status_code == 403, created.text
    assert status_of(open_app, sweep_id) == "running"


def test_without_tokens_programs_that_send_no_origin_pass(open_app: TestClient) -> None:
    sweep_id = running_sweep(open_app)  # no Origin: curl, the CLI, workers
    assert open_app.post(f"{API}/sweeps/{sweep_id}/pause").status_code == 200
    assert open_app.post(f"{API}/sweeps/{sweep_id}/resume", headers={"Origin": OWN}).status_code == 200


@pytest.mark.parametrize("host", ["attacker.example:8000", "attacker.example", "127.0.0.1.evil.example:8000",
                                  "sweeper.lan:8000", "0x7f.1:8000"])
def test_without_tokens_a_host_the_server_does_not_answer_to_gets_400(open_app: TestClient, host: str) -> None:
    refused = open_app.get(f"{API}/sweeps", headers={"Host": host})
    assert refused.status_code == 400, refused.text
    detail = refused.json()["detail"]
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    assert repr(host) in detail and f"--allowed-host {name}" in detail and "SWEEPER_ALLOWED_HOSTS" in detail
    created = open_app.post(f"{API}/sweeps", json=grid_spec(), headers={"Host": host})
    assert created.status_code == 400, created.text


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "127.0.0.1", "localhost:1234", "LOCALHOST.:8000", "[::1]:8000",
                                  "[::1]"])
def test_without_tokens_the_loopback_names_are_answered_on_any_port(open_app: TestClient, host: str) -> None:
    assert open_app.get(f"{API}/sweeps", headers={"Host": host}).status_code == 200


def test_the_bind_address_is_answered(client_with: Callable[..., TestClient]) -> None:
    client = client_with(host="127.0.0.2", allowed_hosts=())
    assert client.get(f"{API}/sweeps", headers={"Host": "127.0.0.2:8000"}).status_code == 200
    assert client.get(f"{API}/sweeps", headers={"Host": "127.0.0.3:8000"}).status_code == 400


def test_sweeper_allowed_hosts_admits_a_name(client_with: Callable[..., TestClient],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPER_ALLOWED_HOSTS", " Sweeper.LAN , box.")
    assert Settings().allowed_hosts == ("sweeper.lan", "box")
    client = at_own_origin(client_with(allowed_hosts=Settings().allowed_hosts))
    for host in ("sweeper.lan:8000", "SWEEPER.lan", "box:1"):
        assert client.get(f"{API}/sweeps", headers={"Host": host}).status_code == 200, host
    assert client.get(f"{API}/sweeps", headers={"Host": "other.lan"}).status_code == 400
    # A listed name is the server's own origin there, as any other.
    sweep_id = running_sweep(client)
    forged = client.post(f"{API}/sweeps/{sweep_id}/pause", headers={"Host": "box:8000", "Origin": "http://box:9000"})
    assert forged.status_code == 403, forged.text
    own = client.post(f"{API}/sweeps/{sweep_id}/pause", headers={"Host": "box:8000", "Origin": "http://box:8000"})
    assert own.status_code == 200, own.text


@pytest.mark.parametrize("entry", ["box:8000", "http://box", "a b", "box/x", "[::1]:80", "*"])
def test_an_allowed_host_that_is_not_a_host_name_is_refused_with_the_rule(entry: str) -> None:
    with pytest.raises(ValidationError, match="allowed_hosts"):
        Settings(allowed_hosts=[entry])


def test_sweeper_serve_takes_allowed_hosts(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import api.server
    from cli._app import app

    served: list[Settings] = []
    monkeypatch.setattr(api.server, "serve", served.append)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["serve", "--allowed-host", "box.lan", "--allowed-host", "10.0.0.7"])
    assert result.exit_code == 0, result.output
    assert served[0].allowed_hosts == ("box.lan", "10.0.0.7")
    result = CliRunner().invoke(app, ["serve", "--allowed-host", "box:80"])
    assert result.exit_code == 2 and "allowed_hosts" in result.output


# -- tokens configured -----------------------------------------------------------------------------

def test_with_tokens_any_host_is_answered_so_workers_reach_the_server_by_any_name(secured: TestClient) -> None:
    worker = at_own_origin(secured, headers=bearer(WORKER))
    for host in ("gpu-head:8000", "10.1.2.3:8000", "api:8000"):
        claimed = worker.post(f"{API}/trials/claim", json={"worker_id": "w1", "host": "h"}, headers={"Host": host})
        assert claimed.status_code == 204, (host, claimed.text)


def test_with_tokens_and_allowed_hosts_only_those_are_answered(client_with: Callable[..., TestClient]) -> None:
    client = at_own_origin(client_with(admin_token=ADMIN, allowed_hosts=["sweeper.example.org"]),
                           headers=bearer(ADMIN))
    assert client.get(f"{API}/sweeps", headers={"Host": "sweeper.example.org"}).status_code == 200
    assert client.get(f"{API}/sweeps").status_code == 200  # 127.0.0.1
    refused = client.get(f"{API}/sweeps", headers={"Host": "attacker.example"})
    assert refused.status_code == 400, refused.text
    assert client.post(f"{API}/session", json={"token": ADMIN}, headers={"Host": "attacker.example"}).status_code == 400


# -- a real server -----------------------------------------------------------------------------------

def test_a_real_server_checks_the_host_and_the_origin(start_server: Callable[..., Any]) -> None:
    import httpx

    server = start_server(allowed_hosts=())
    with httpx.Client(base_url=server.url, timeout=30) as http:
        created = http.post(f"{API}/sweeps", json=grid_spec())
        assert created.status_code == 201, created.text
        sweep_id = created.json()["id"]
        assert http.get(f"{API}/sweeps", headers={"Host": "attacker.example:8000"}).status_code == 400
        forged = http.post(f"{API}/sweeps/{sweep_id}/cancel", headers={"Origin": EVIL, **TEXT_PLAIN})
        assert forged.status_code == 403, forged.text
        assert http.post(f"{API}/sweeps/{sweep_id}/pause", headers={"Origin": server.url}).status_code == 200

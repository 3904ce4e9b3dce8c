"""Security headers: the page, the API and every error answer carry a Content-Security-Policy that allows no
inline script but the page's own (by hash) and no framing, `nosniff` and a Referrer-Policy; TensorBoard's
proxied pages keep their own headers, with nosniff and a framing rule added.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from api.security_headers import SecurityHeaders
from api_testing import API, grid_spec

ADMIN = "admin-0123456789abcdef-ADMIN"
WORKER = "worker-0123456789abcdef-WORKER"


@pytest.fixture
def secured(client_with: Callable[..., TestClient]) -> TestClient:
    return client_with(admin_token=ADMIN, worker_token=WORKER, max_body_bytes=4096)


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def policy(response: object) -> dict[str, list[str]]:
    """The Content-Security-Policy header as {directive: [sources]}."""
    header = response.headers["content-security-policy"]  # type: ignore[attr-defined]
    directives = [part.split() for part in header.split(";") if part.strip()]
    return {directive[0]: directive[1:] for directive in directives}


def assert_the_servers_headers(response: object) -> None:
    csp = policy(response)
    assert csp["default-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["object-src"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert "'unsafe-inline'" not in csp["script-src"] and "'unsafe-eval'" not in csp["script-src"]
    assert csp["style-src"] == ["'self'"]
    headers = response.headers  # type: ignore[attr-defined]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    assert len(headers.get_list("content-security-policy")) == 1


def test_the_page_allows_its_own_inline_scripts_by_hash_and_nothing_else_inline(secured: TestClient) -> None:
    page = secured.get("/")

    assert page.status_code == 200
    assert_the_servers_headers(page)
    inline = re.findall(r"<script(?![^>]*\ssrc=)[^>]*>(.*?)</script>", page.text, re.DOTALL)
    assert len(inline) == 2  # the import map, and the sweeps list's early request
    hashes = {f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'" for script in inline}
    assert set(policy(page)["script-src"]) == {"'self'", *hashes}
    assert "style=" not in page.text and "<style" not in page.text  # style-src 'self' holds for the shell


def test_static_files_and_api_answers_carry_the_headers(secured: TestClient) -> None:
    assert_the_servers_headers(secured.get("/static/app.js"))
    assert_the_servers_headers(secured.get("/healthz"))
    created = secured.post(f"{API}/sweeps", json=grid_spec(), headers=as_(ADMIN))
    assert created.status_code == 201
    assert_the_servers_headers(created)
    listed = secured.get(f"{API}/sweeps", headers=as_(ADMIN))
    assert listed.status_code == 200
    assert_the_servers_headers(listed)


def test_error_answers_carry_the_headers(secured: TestClient) -> None:
    answers = {
        401: secured.get(f"{API}/sweeps"),
        403: secured.get(f"{API}/sweeps", headers=as_(WORKER)),
        404: secured.get("/nothing/here", headers=as_(ADMIN)),
        405: secured.get(f"{API}/trials/claim", headers=as_(ADMIN)),
        413: secured.post(f"{API}/sweeps", content=b"x" * 10_000,
                          headers={**as_(ADMIN), "content-type": "application/json"}),
        422: secured.post(f"{API}/sweeps", json={"name": "no model"}, headers=as_(ADMIN)),
    }
    for status_code, answer in answers.items():
        assert answer.status_code == status_code, (status_code, answer.text)
        assert_the_servers_headers(answer)


def test_even_a_bug_answers_with_the_headers(client_with: Callable[..., TestClient]) -> None:
    app = client_with(admin_token=ADMIN).app

    @app.get("/crash")
    def crash() -> None:
        raise RuntimeError("a bug")

    answer = TestClient(app, raise_server_exceptions=False).get("/crash", headers=as_(ADMIN))

    assert answer.status_code == 500
    assert_the_servers_headers(answer)


def test_the_api_docs_may_load_their_cdn_but_still_not_be_framed(secured: TestClient) -> None:
    docs = secured.get("/docs", headers=as_(ADMIN))

    assert docs.status_code == 200
    csp = policy(docs)
    assert csp["frame-ancestors"] == ["'none'"]
    assert "https://cdn.jsdelivr.net" in csp["script-src"]
    assert docs.headers["x-content-type-options"] == "nosniff"


def test_tensorboards_pages_keep_their_own_headers_with_nosniff_and_a_framing_rule_added() -> None:
    # TensorBoard's page needs inline scripts: what it sends is kept, and only narrowed.
    tensorboards_own = "default-src 'self' 'unsafe-inline'"

    def tensorboard_page(_request: object) -> HTMLResponse:
        return HTMLResponse("<script>start()</script>", headers={"Content-Security-Policy": tensorboards_own})

    app = Starlette(routes=[Route("/tensorboard/1/", tensorboard_page), Route("/", tensorboard_page)])
    client = TestClient(SecurityHeaders(app))

    proxied = client.get("/tensorboard/1/")
    assert proxied.headers.get_list("content-security-policy") == [tensorboards_own, "frame-ancestors 'self'"]
    assert proxied.headers["x-content-type-options"] == "nosniff"
    assert "referrer-policy" not in proxied.headers
    # Elsewhere a route's own policy wins over the server's default, and the other headers are added.
    own = client.get("/")
    assert own.headers.get_list("content-security-policy") == [tensorboards_own]
    assert own.headers["referrer-policy"] == "same-origin"

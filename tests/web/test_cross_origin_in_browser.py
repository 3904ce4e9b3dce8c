"""Another web page, in a real browser (Playwright driving Debian's headless Chromium), against a real server.

A page on another port of 127.0.0.1 (the same site, so a SameSite=Strict cookie goes with its requests)
auto-submits a text/plain form POST to /api/v1/sweeps/{id}/cancel and sends a no-cors fetch POST to
/pause, while the browser is logged in on the server's page by cookie, and again with no token
configured: both sweeps stay running. A page whose DNS name points at 127.0.0.1 (DNS rebinding) can
neither read nor create sweeps. The server's own page still pauses a sweep with the same cookie.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

from browser_testing import CHROMIUM, sync_api  # noqa: E402  (skips the module without them)

from api.server import RunningServer, start_in_thread  # noqa: E402
from api.settings import Settings  # noqa: E402

REBOUND = "rebound.test"
"""A DNS name the browser resolves to 127.0.0.1, as an attacker's would once rebound."""
SPEC = {"name": "target", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
        "hparams": {"units": 16}, "search": {"strategy": "grid"}, "train": {"epochs": 1}}


@pytest.fixture(params=["logged in by cookie", "no token"])
def admin_token(request: pytest.FixtureRequest) -> str | None:
    return secrets.token_urlsafe(32) if request.param == "logged in by cookie" else None


@pytest.fixture
def server(tmp_path: Path, admin_token: str | None) -> Iterator[RunningServer]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'sweeper.db'}", logdir=tmp_path / "runs", port=0,
                        admin_token=admin_token, allowed_hosts=())
    with start_in_thread(settings) as running:
        yield running


@pytest.fixture
def api(server: RunningServer, admin_token: str | None) -> Iterator[httpx.Client]:
    """The REST API as a program (a bearer token when there is one), to set up and check."""
    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    with httpx.Client(base_url=f"{server.url}/api/v1", headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
def elsewhere() -> Iterator[Any]:
    """`elsewhere(html)`: the URL of a page with that text, served on another port of 127.0.0.1."""
    pages: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            body = pages.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def serve(html: str) -> str:
        path = f"/page-{len(pages)}.html"
        pages[path] = html.encode()
        return f"http://127.0.0.1:{httpd.server_address[1]}{path}"

    yield serve
    httpd.shutdown()
    thread.join(10)
    httpd.server_close()


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=[f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1"])
        yield chromium
        chromium.close()


def created_sweep(api: httpx.Client) -> int:
    created = api.post("/sweeps", json=SPEC)
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


def log_in(page: Any, server: RunningServer, admin_token: str | None) -> None:
    """Open the server's page; log in through its dialog when the server has a token."""
    page.goto(server.url)
    if admin_token is None:
        return
    login = page.locator("dialog#login")
    sync_api.expect(login).to_be_visible()
    login.locator("input[name=token]").fill(admin_token)
    login.locator("button[type=submit]").click()
    sync_api.expect(login).to_be_hidden()


def test_a_page_of_another_origin_cannot_cancel_or_pause_a_sweep(
        server: RunningServer, api: httpx.Client, admin_token: str | None, browser: Any, elsewhere: Any) -> None:
    to_cancel, to_pause = created_sweep(api), created_sweep(api)
    context = browser.new_context()
    page = context.new_page()
    log_in(page, server, admin_token)
    if admin_token is not None:
        assert context.cookies(server.url), "the login set no cookie"

    cancel_url = f"{server.url}/api/v1/sweeps/{to_cancel}/cancel"
    pause_url = f"{server.url}/api/v1/sweeps/{to_pause}/pause"
    fetching = elsewhere(f"""<!doctype html><title>elsewhere</title>
<script>fetch("{pause_url}", {{method: "POST", mode: "no-cors", credentials: "include"}});</script>""")
    posting = elsewhere(f"""<!doctype html><title>elsewhere</title>
<form id="forged" method="POST" enctype="text/plain" action="{cancel_url}"><input name="x" value="y"></form>
<script>document.getElementById("forged").submit();</script>""")
    for attack, url in ((fetching, pause_url), (posting, cancel_url)):
        with page.expect_response(url, timeout=30_000) as answered:
            page.goto(attack)
        answer = answered.value
        # The browser did send it (Chromium's DevTools report a no-cors fetch's final headers only now and
        # then; the form's always): from the other origin, with the login cookie. The server refused it.
        headers = answer.request.all_headers()
        if url == cancel_url or "origin" in headers:
            assert headers["origin"].startswith("http://127.0.0.1:") and headers["origin"] != server.url, headers
            assert admin_token is None or "cookie" in headers, headers
        assert answer.status == 403, (url, answer.status)
        if url == cancel_url:  # the page shows the answer (the fetch's is opaque to it)
            assert "cross-origin request refused" in answer.text()
    for sweep_id in (to_cancel, to_pause):
        assert api.get(f"/sweeps/{sweep_id}").json()["status"] == "running"

    # The server's own page, with the same cookie, still changes what it is asked to.
    page.goto(server.url)
    paused = page.evaluate("""async (url) => (await fetch(url, {method: "POST", credentials: "same-origin"})).status""",
                           f"/api/v1/sweeps/{to_pause}/pause")
    assert paused == 200
    assert api.get(f"/sweeps/{to_pause}").json()["status"] == "paused"
    context.close()


def test_a_page_whose_name_is_rebound_to_this_machine_can_neither_read_nor_create(
        server: RunningServer, api: httpx.Client, admin_token: str | None, browser: Any) -> None:
    created_sweep(api)
    port = server.url.rsplit(":", 1)[1]
    context = browser.new_context()
    page = context.new_page()
    log_in(page, server, admin_token)  # on the server's own name: the cookie is 127.0.0.1's
    # Once the attacker's name points at 127.0.0.1, its page and this server are one origin to the browser
    # (http://rebound.test:<port>): a document of that origin, loaded from there, runs the attacker's script.
    page.goto(f"http://{REBOUND}:{port}/")
    read = page.evaluate("""async () => {
        const response = await fetch("/api/v1/sweeps");
        return {status: response.status, text: await response.text()};
    }""")
    made = page.evaluate("""async (spec) => (await fetch("/api/v1/sweeps", {
        method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(spec)})).status""", SPEC)
    if admin_token is None:
        # No token: the server refuses the name.
        assert read["status"] == 400, read
        assert REBOUND in read["text"] and "--allowed-host" in read["text"]
        assert made == 400
    else:
        # Tokens: the name is answered, but the browser keeps the cookie for 127.0.0.1, so the gate says 401.
        assert read["status"] == 401, read
        assert made == 401
    assert api.get("/sweeps").json()["count"] == 1
    context.close()

"""The web page under its Content-Security-Policy, and its login session, in a real browser: Playwright driving
Debian's headless Chromium against a real server with tokens. Every view loads and works with no policy
violation in the console (the inline scripts run by hash, the progress bars' widths apply); the login
leaves a session id in the cookie, never the token; logging out ends the session on the server, so the old
cookie opens nothing.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.browser]

from browser_testing import CHROMIUM, sync_api  # noqa: E402  (skips the module without them)

from api.server import RunningServer  # noqa: E402

SPEC: dict[str, Any] = {"name": "csp", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
                        "hparams": {"units": {"type": "discrete", "values": [8, 16, 32]}},
                        "search": {"strategy": "grid"}, "train": {"epochs": 1}}


@pytest.fixture
def sweep(server: RunningServer, tokens: dict[str, str]) -> dict[str, Any]:
    """A sweep of three trials, one completed (so the progress bars have parts to size)."""
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    worker = {"Authorization": f"Bearer {tokens['worker']}"}
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as api:
        created = api.post("/sweeps", json=SPEC, headers=admin).json()
        assignment = api.post("/trials/claim", json={"worker_id": "w1", "host": "h"}, headers=worker).json()
        report = {"worker_id": "w1", "lease_token": assignment["lease_token"]}
        api.post(f"/trials/{assignment['trial_id']}/metrics", json={**report, "epoch": 0,
                                                                     "metrics": {"val_accuracy": 0.9}}, headers=worker)
        done = api.post(f"/trials/{assignment['trial_id']}/complete", json={**report, "metrics": {"val_accuracy": 0.9}},
                        headers=worker)
        assert done.status_code == 200, done.text
    return created


def test_the_page_runs_under_its_policy_with_a_session_cookie_that_logout_ends(
        server: RunningServer, tokens: dict[str, str], sweep: dict[str, Any], browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    console: list[str] = []
    errors: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: errors.append(str(error)))
    expect = sync_api.expect

    def violations() -> list[str]:
        return [line for line in console if "Content Security Policy" in line or "Refused to" in line]

    try:
        page.goto(server.url)
        login = page.locator("dialog#login")
        login.locator("input[name=token]").fill(tokens["admin"])
        login.locator("button[type=submit]").click()
        expect(login).to_be_hidden()

        # The sweeps list: its early request came from the inline script (allowed by its hash), and the
        # progress bar's parts are sized by their style.
        row = page.locator(f".sweeps-table tr[data-sweep-id='{sweep['id']}']")
        expect(row).to_be_visible()
        assert page.evaluate("() => typeof window.sweeperEarly") == "object"
        expect(row.locator(".progress-part")).to_have_css("flex-grow", "1")
        assert row.locator(".progress-fill").evaluate("(fill) => fill.style.width") == "33.3%"

        # The sweep's own view, with its chart and trials, and the form.
        page.goto(f"{server.url}/#/sweeps/{sweep['id']}")
        expect(page.locator(".summary .progress-text")).to_have_text("1 / 3")
        expect(page.locator(".trials-table tbody tr")).to_have_count(1)
        page.goto(f"{server.url}/#/new")
        expect(page.locator(".new-sweep h1")).to_have_text("New sweep")
        page.wait_for_load_state("networkidle")

        assert violations() == [], violations()
        assert errors == [], errors

        # The cookie holds a session id, not the token, out of the page's script's reach.
        [cookie] = [cookie for cookie in context.cookies() if cookie["name"] == "sweeper_session"]
        assert tokens["admin"] not in cookie["value"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert "sweeper_session" not in page.evaluate("() => document.cookie")

        # Logging out ends the session on the server: the old cookie opens nothing any more.
        page.locator("#logout").click()
        expect(login).to_be_visible()
        replayed = httpx.get(f"{server.url}/api/v1/sweeps", cookies={cookie["name"]: cookie["value"]}, timeout=30)
        assert replayed.status_code == 401

        # The console listener does catch a violation: an injected inline script is refused and reported.
        page.evaluate("""() => { const script = document.createElement("script");
                                 script.textContent = "window.injected = true"; document.head.append(script); }""")
        assert page.evaluate("() => window.injected") is None
        for _ in range(50):  # the console event may arrive a moment later
            if any("inline script" in line for line in violations()):
                break
            page.wait_for_timeout(100)
        assert any("inline script" in line for line in violations()), console
    finally:
        context.close()

"""Pruned trials in the web page, in a real browser: Playwright driving Debian's headless Chromium against a
real server (with tokens). A test double of a worker trains a sweep with an ASHA stopping rule through the
REST API, so which trials are pruned, and when, is known; the page must show each pruned trial as
"pruned @ N" (N the epochs it trained), count pruned trials apart, show the rule, and give the reason in the
trial's panel, where its curves end at a marked epoch. Screenshots go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

from browser_testing import CHROMIUM, sync_api  # noqa: E402  (skips the module without them)

from api.server import RunningServer  # noqa: E402

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
ASHA_SPEC: dict[str, Any] = {
    "name": "web-asha", "model": "mlp", "dataset": "digits",
    "objective": {"metric": "val_accuracy", "goal": "maximize"},
    "hparams": {"units": {"type": "discrete", "values": [8, 16, 32]}},
    "search": {"strategy": "grid"},
    "stopping": {"rule": "asha", "min_epochs": 1, "reduction_factor": 3},
    "train": {"epochs": 4},
}
CURVES = {8: [0.90, 0.95, 0.97, 0.98], 16: [0.95, 0.96, 0.91, 0.92], 32: [0.50, 0.60, 0.70, 0.80]}
"""val_accuracy per epoch by units. With rungs after 1 and 3 epochs and 1 in 3 trials going on: units 8 trains
to the end; units 16 leads at the first rung and trails at the second, so it stops after 3 epochs; units 32
trails at the first rung and stops after 1."""


@pytest.fixture
def pruned_sweep(server: RunningServer, tokens: dict[str, str]) -> dict[str, Any]:
    """The ASHA sweep, trained to its end: one trial completed, one pruned after 3 epochs, one after 1."""
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    with httpx.Client(base_url=f"{server.url}/api/v1", headers=admin, timeout=30) as api:
        sweep = api.post("/sweeps", json=ASHA_SPEC).json()
        train_as_a_worker(server.url, tokens["worker"])
        trials = api.get(f"/sweeps/{sweep['id']}/trials").json()["data"]
    # What the server decided, so that the test below is about the page, not about ASHA.
    assert [(t["hparams"]["units"], t["state"], t["pruned_at_epoch"]) for t in trials] == [
        (8, "completed", None), (16, "pruned", 2), (32, "pruned", 0)]
    return {"id": sweep["id"], "trials": {t["hparams"]["units"]: t for t in trials}}


def train_as_a_worker(url: str, token: str) -> None:
    """Claim every trial and report its curve an epoch at a time, stopping where the server answers "prune",
    then complete it with the metrics it reached, as `workers.agent` does."""
    with httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        while (claim := api.post("/trials/claim", json={"worker_id": "w1", "host": "box"})).status_code == 200:
            assignment = claim.json()
            trial, body = assignment["trial_id"], {"worker_id": "w1", "lease_token": assignment["lease_token"]}
            for epoch, value in enumerate(CURVES[assignment["hparams"]["units"]]):
                metrics = {"val_accuracy": value, "loss": 1 - value}
                answer = api.post(f"/trials/{trial}/metrics", json={**body, "epoch": epoch, "metrics": metrics})
                assert answer.status_code == 200, answer.text
                if answer.json()["action"] == "prune":
                    break
            assert api.post(f"/trials/{trial}/complete", json={**body, "metrics": metrics}).status_code == 200
        assert claim.status_code == 204, claim.text


def shoot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"pruned-{name}.png"), full_page=True)


def test_pruned_trials_read_pruned_at_their_epoch_with_their_reason_in_the_trial_panel(
        server: RunningServer, tokens: dict[str, str], pruned_sweep: dict[str, Any], browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    expect = sync_api.expect
    trials = pruned_sweep["trials"]

    def row(units: int) -> Any:
        return page.locator(f".trials-table tr[data-trial-id='{trials[units]['id']}']")

    try:
        page.goto(f"{server.url}/#/sweeps/{pruned_sweep['id']}")
        login = page.locator("dialog#login")
        login.locator("input[name=token]").fill(tokens["admin"])
        login.locator("button[type=submit]").click()
        expect(login).to_be_hidden()

        # In the table, each pruned trial reads "pruned @ N", N the epochs it trained (pruned_at_epoch + 1).
        expect(page.locator(".trials-table tbody tr")).to_have_count(3)
        expect(row(8).locator("td.state .badge")).to_have_text("completed")
        pruned_late = row(16).locator("td.state .badge")
        expect(pruned_late).to_have_text("pruned @ 3")
        expect(pruned_late).to_have_attribute("title", re.compile(r"after 3 epochs trained \(its last is epoch 2 "))
        expect(row(32).locator("td.state .badge")).to_have_text("pruned @ 1")
        expect(row(32).locator("td.state .badge")).to_have_attribute("title", re.compile(r"after 1 epoch trained "))

        # Pruned has a colour of its own, apart from completed, failed and cancelled.
        colours = page.evaluate("""() => Object.fromEntries(["completed", "failed", "pruned", "cancelled"].map((s) => {
            const badge = document.body.appendChild(Object.assign(document.createElement("span"),
                                                                  { className: `badge state-${s}` }));
            const colour = getComputedStyle(badge).color;
            badge.remove();
            return [s, colour];
        }))""")
        assert len(set(colours.values())) == 4, colours

        # The summary counts pruned trials apart, in the counts and in the progress bar, and names the rule.
        expect(page.locator(".summary .progress-text")).to_have_text("3 / 3")
        expect(page.locator(".counts .count")).to_have_text(["1 completed", "2 pruned"])
        parts = page.locator(".summary .progress-part")
        expect(parts).to_have_count(2)
        expect(parts.nth(1)).to_have_attribute("data-state", "pruned")
        expect(parts.nth(1)).to_have_css("flex-grow", "2")
        expect(page.locator(".summary .progress")).to_have_attribute("title", "1 completed, 2 pruned")
        expect(page.locator(".facts dd.stopping")).to_have_text(
            "asha: first rung after 1 epoch, 1 in 3 trials goes on at each rung")
        shoot(page, "table")

        # The pruned trial's panel: its state, the server's reason, and curves that end at a marked epoch.
        row(16).click()
        panel = page.locator(".trial-panel")
        expect(panel.locator("h2")).to_have_text(f"Trial {trials[16]['number']}")
        expect(panel.locator(".card-head .badge")).to_have_text("pruned @ 3")
        reason = trials[16]["prune_reason"]
        assert "0.91" in reason, reason  # the server's sentence, shown as it is
        expect(panel.locator(".prune-reason")).to_have_text(f"Pruned after 3 epochs: {reason}")
        accuracy = panel.locator("figure.curve", has_text="val_accuracy")
        expect(accuracy.locator("circle.series-dot")).to_have_count(3)  # epochs 0, 1 and 2, then nothing
        expect(accuracy.locator("text.tick.x")).to_have_text(["0", "1", "2", "3"])  # to the 4th it would have had
        expect(accuracy.locator(".stop-mark text")).to_have_text("pruned @ 3")
        shoot(page, "panel")

        # A completed trial's panel has neither a reason nor a mark.
        row(8).click()
        expect(panel.locator(".card-head .badge")).to_have_text("completed")
        expect(panel.locator("figure.curve", has_text="val_accuracy").locator("circle.series-dot")).to_have_count(4)
        expect(panel.locator(".prune-reason")).to_have_count(0)
        expect(panel.locator(".stop-mark")).to_have_count(0)

        # The state filter keeps the pruned trials only.
        page.locator("select[aria-label='Show trials in state']").select_option("pruned")
        expect(page.locator(".trials-table td.state .badge")).to_have_text(["pruned @ 3", "pruned @ 1"])
        assert errors == [], errors
    except Exception:
        shoot(page, "failure")
        raise
    finally:
        context.close()

"""A Population Based Training member's lineage in the web page, in a real browser (Debian's headless Chromium
through Playwright) against a real server with tokens. A test double of two workers trains a population of 2
through the REST API, member 1 worse than member 2, so member 1 copies member 2 after its second epoch: the
table shows each member's segment count and parent, and member 1's panel lists its segments with what changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

from browser_testing import CHROMIUM, sync_api  # noqa: E402,F401  (skips the module without them)

from api.server import RunningServer  # noqa: E402

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PBT_SPEC: dict[str, Any] = {
    "name": "web-pbt", "model": "mlp", "dataset": "digits",
    "objective": {"metric": "val_accuracy", "goal": "maximize"},
    "hparams": {"learning_rate": {"type": "real_interval", "min": 1e-4, "max": 1e-1, "log": True},
                "dropout": {"type": "real_interval", "min": 0.0, "max": 0.5}},
    "search": {"strategy": "pbt", "population": 2, "interval_epochs": 2, "mutable": ["learning_rate", "dropout"]},
    "train": {"epochs": 4},
}


def train_population(url: str, token: str) -> None:
    """Two workers, one member each, an epoch at a time in turn; member k's val_accuracy is 0.1 * k + epoch / 100."""
    with httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        held = []
        for worker in ("w1", "w2"):
            assignment = api.post("/trials/claim", json={"worker_id": worker, "host": "box"}).json()
            held.append((worker, assignment))
        for epoch in range(4):
            for worker, assignment in reversed(held):  # member 2 reports each epoch first
                body = {"worker_id": worker, "lease_token": assignment["lease_token"]}
                metrics = {"val_accuracy": 0.1 * assignment["number"] + epoch / 100, "loss": 1.0}
                answer = api.post(f"/trials/{assignment['trial_id']}/metrics", json={**body, "epoch": epoch,
                                                                                   "metrics": metrics})
                assert answer.status_code == 200, answer.text
        for worker, assignment in held:
            body = {"worker_id": worker, "lease_token": assignment["lease_token"], "metrics": {"val_accuracy": 0.5}}
            assert api.post(f"/trials/{assignment['trial_id']}/complete", json=body).status_code == 200


def test_the_page_lists_a_members_segments_and_the_table_its_segment_count_and_parent(
        server: RunningServer, tokens: dict[str, str], browser: Any) -> None:
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    with httpx.Client(base_url=f"{server.url}/api/v1", headers=admin, timeout=30) as api:
        sweep = api.post("/sweeps", json=PBT_SPEC).json()
        train_population(server.url, tokens["worker"])
        trials = {t["number"]: t for t in api.get(f"/sweeps/{sweep['id']}/trials").json()["data"]}
    lineage = trials[1]["lineage"]
    assert len(lineage) == 2 and lineage[1]["parent_number"] == 2 and len(trials[2]["lineage"]) == 1
    before, after = lineage[0]["hparams"], lineage[1]["hparams"]

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    expect = sync_api.expect
    try:
        page.goto(f"{server.url}/#/sweeps/{sweep['id']}")
        login = page.locator("dialog#login")
        login.locator("input[name=token]").fill(tokens["admin"])
        login.locator("button[type=submit]").click()
        expect(login).to_be_hidden()

        def row(number: int) -> Any:
            return page.locator(f".trials-table tr[data-trial-id='{trials[number]['id']}']")

        expect(page.locator(".trials-table thead th", has_text="Lineage")).to_have_count(1)
        expect(row(1).locator("td.lineage")).to_have_text("2 segments, from 2")
        expect(row(2).locator("td.lineage")).to_have_text("1 segment")

        row(1).click()
        segments = page.locator(".trial-panel .lineage li")
        expect(segments).to_have_count(2)
        expect(segments.nth(0)).to_contain_text("Segment 1 from epoch 1:")
        expect(segments.nth(1)).to_contain_text("Segment 2 from epoch 3: copied member 2 after epoch 2;")
        # The hparams that changed, from the first segment's to the second's (the donor's, explored).
        changed = [name for name in after if after[name] != before[name]]
        assert changed
        for name in changed:
            expect(segments.nth(1)).to_contain_text(f"{name} ")
        expect(segments.nth(1)).to_contain_text("→")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "pbt-lineage.png"), full_page=True)
        assert not errors, errors
    finally:
        context.close()

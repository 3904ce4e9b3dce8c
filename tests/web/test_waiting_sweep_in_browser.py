"""A sweep whose trials no connected worker can run, in a real browser: the page says which worker it waits
for, and stops saying so once such a worker has connected."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from test_pruned_trials_in_browser import shoot, sync_api

from api.server import RunningServer

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

PAIRS_SPEC: dict[str, Any] = {
    "name": "web-pairs", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
    "hparams": {"units": {"type": "discrete", "values": [8, 16]}}, "search": {"strategy": "grid"},
    "train": {"epochs": 1, "gpus_per_trial": 2},
}


def test_the_page_says_a_two_gpu_sweep_waits_for_a_two_gpu_worker(server: RunningServer, tokens: dict[str, str],
                                                                   browser: Any) -> None:
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    worker = {"Authorization": f"Bearer {tokens['worker']}"}
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as api:
        sweep = api.post("/sweeps", json=PAIRS_SPEC, headers=admin).json()
        refused = api.post("/trials/claim", json={"worker_id": "box-gpu0", "host": "box", "gpus": 1}, headers=worker)
        assert refused.status_code == 204

        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        expect = sync_api.expect
        page.goto(f"{server.url}/#/sweeps/{sweep['id']}")
        login = page.locator("dialog#login")
        login.locator("input[name=token]").fill(tokens["admin"])
        login.locator("button[type=submit]").click()
        expect(login).to_be_hidden()

        waiting = page.locator("#waiting-for")
        expect(waiting).to_have_text("Waiting for a worker with 2 GPUs: the connected workers have at most 1.")
        expect(waiting).to_be_visible()
        shoot(page, "sweep-waiting-for-two-gpus")

        claimed = api.post("/trials/claim", json={"worker_id": "box-gpu0+1", "host": "box", "gpu": "0,1", "gpus": 2},
                           headers=worker)
        assert claimed.status_code == 200
        expect(waiting).to_be_hidden(timeout=20_000)
        expect(waiting).to_have_text("")
    assert errors == []

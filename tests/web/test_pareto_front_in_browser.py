"""A multi-objective sweep in the web page, in a real browser: the summary names the objectives and links the
Pareto front's trials, the table marks them and shows every objective's column."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from test_pruned_trials_in_browser import shoot, sync_api

from api.server import RunningServer

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

TRADE_OFF_SPEC: dict[str, Any] = {
    "name": "web-pareto", "model": "mlp", "dataset": "digits",
    "objective": [{"metric": "val_accuracy", "goal": "maximize"}, {"metric": "num_params", "goal": "minimize"}],
    "hparams": {"units": {"type": "discrete", "values": [8, 16, 32]},
                "dropout": {"type": "discrete", "values": [0.0, 0.5]}},
    "search": {"strategy": "grid"},
    "train": {"epochs": 1},
}


def metrics_of(hparams: dict[str, Any]) -> dict[str, float]:
    """More units: more accurate and larger; dropout 0.5 only costs accuracy, so those three are dominated."""
    return {"val_accuracy": 0.9 + hparams["units"] / 1000 - hparams["dropout"] / 10,
            "num_params": float(hparams["units"] * 100), "loss": 0.1}


def test_the_pareto_front_is_named_linked_and_marked(server: RunningServer, tokens: dict[str, str],
                                                     browser: Any) -> None:
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as api:
        worker = {"Authorization": f"Bearer {tokens['worker']}"}
        # An earlier sweep's trial first, so that this sweep's trial ids are not their numbers.
        api.post("/sweeps", json={**TRADE_OFF_SPEC, "name": "earlier", "hparams": {"units": 8, "dropout": 0.0}},
                 headers={"Authorization": f"Bearer {tokens['admin']}"})
        earlier = api.post("/trials/claim", json={"worker_id": "w1", "host": "box"}, headers=worker).json()
        api.post(f"/trials/{earlier['trial_id']}/complete", headers=worker, json={
            "worker_id": "w1", "lease_token": earlier["lease_token"], "metrics": metrics_of(earlier["hparams"])})
        sweep = api.post("/sweeps", json=TRADE_OFF_SPEC, headers={"Authorization": f"Bearer {tokens['admin']}"}).json()
        while (claim := api.post("/trials/claim", json={"worker_id": "w1", "host": "box"},
                                 headers=worker)).status_code == 200:
            assignment = claim.json()
            api.post(f"/trials/{assignment['trial_id']}/complete", headers=worker, json={
                "worker_id": "w1", "lease_token": assignment["lease_token"],
                "metrics": metrics_of(assignment["hparams"])})
        read = api.get(f"/sweeps/{sweep['id']}", headers={"Authorization": f"Bearer {tokens['admin']}"}).json()
        trials = api.get(f"/sweeps/{sweep['id']}/trials",
                         headers={"Authorization": f"Bearer {tokens['admin']}"}).json()["data"]
    front = {t["id"] for t in trials if t["hparams"]["dropout"] == 0.0}
    assert set(read["pareto_front"]) == front  # what the server decided; the test is about the page
    numbers = {t["id"]: t["number"] for t in trials}
    assert read["pareto_front_numbers"] == [numbers[trial_id] for trial_id in read["pareto_front"]]
    assert all(trial_id != number for trial_id, number in numbers.items())

    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    expect = sync_api.expect
    page.goto(f"{server.url}/#/sweeps/{sweep['id']}")
    login = page.locator("dialog#login")
    login.locator("input[name=token]").fill(tokens["admin"])
    login.locator("button[type=submit]").click()
    expect(login).to_be_hidden()

    expect(page.locator(".facts dd.pareto-front")).to_contain_text("3 trials:")
    # The front's trials are named by their numbers, as the table names them.
    expect(page.locator(".facts dd.pareto-front a")).to_have_text([str(numbers[trial_id])
                                                                    for trial_id in sorted(front)])
    expect(page.locator(".facts").first).to_contain_text("val_accuracy (maximize), num_params (minimize)")
    expect(page.locator(".trials-table thead th")).to_contain_text(["#", "State", "val_accuracy", "num_params"])
    expect(page.locator(".trials-table tbody tr")).to_have_count(6)
    for trial in trials:
        marker = page.locator(f".trials-table tr[data-trial-id='{trial['id']}'] .pareto")
        expect(marker).to_have_count(1 if trial["id"] in front else 0)
    page.locator(".facts dd.pareto-front a").first.click()
    expect(page.locator(".trial-panel h2")).to_be_visible()
    shoot(page, "pareto-front")
    assert errors == []

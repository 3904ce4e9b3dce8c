"""A sweep's TensorBoard in a real browser: the server's own TensorBoard process, reading the logs that the
trials of a small sweep wrote with sweeper.hparams_log where their assignments said, seen through the
server's proxy in Chromium. Its HParams dashboard must show every hparam the sweep varies (not the first
five by name, which put the fixed `batch_size` in and left `optimizer`, `lr_schedule` and `units` out), and
list runs and trials in number order (text order, as TensorBoard sorts, must be number order)."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import pytest
from test_pruned_trials_in_browser import shoot, sync_api

from api.server import RunningServer
from sweeper import log_location
from sweeper.hparams_log import TrialSession

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

TENSORBOARD_SECONDS = 120
TRIALS = 12
"""More than 9, so that numbers of one and two digits must sort."""
SPEC: dict[str, Any] = {
    "name": "tb-columns", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
    "hparams": {
        "batch_size": 32,
        "units": {"type": "discrete", "values": [16, 32, 64]},
        "dropout": {"type": "real_interval", "min": 0.1, "max": 0.5},
        "depth": {"type": "int_interval", "min": 1, "max": 3},
        "learning_rate": {"type": "real_interval", "min": 1.0e-4, "max": 1.0e-1, "log": True},
        "optimizer": {"type": "discrete", "values": ["adam", "sgd"]},
        "lr_schedule": {"type": "discrete", "values": ["constant", "step", "cosine"]},
    },
    "search": {"strategy": "random", "max_trials": TRIALS, "seed": 0},
    "train": {"epochs": 1},
}
VARYING = {"units", "dropout", "depth", "learning_rate", "log10_learning_rate", "optimizer", "lr_schedule"}


@pytest.fixture
def logged_sweep(server: RunningServer, tokens: dict[str, str]) -> int:
    """The sweep, each of its trials claimed, logged as the runner logs a trial (an HParams session named after
    the trial's folder, with its objective) and completed."""
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as api:
        admin, worker = ({"Authorization": f"Bearer {tokens[role]}"} for role in ("admin", "worker"))
        sweep = api.post("/sweeps", json=SPEC, headers=admin).json()
        while (claim := api.post("/trials/claim", json={"worker_id": "w1", "host": "box"},
                                 headers=worker)).status_code == 200:
            assignment = claim.json()
            score = 0.5 + assignment["number"] / 100
            with TrialSession(assignment["logdir"], log_location.name(assignment["logdir"]), assignment["hparams"],
                              assignment["log_scaled"]) as session:
                session.write_objective("val_accuracy", score, step=0)
            answer = api.post(f"/trials/{assignment['trial_id']}/complete", headers=worker, json={
                "worker_id": "w1", "lease_token": assignment["lease_token"], "metrics": {"val_accuracy": score}})
            assert answer.status_code == 200, answer.text
        assert claim.status_code == 204, claim.text
        assert api.post(f"/sweeps/{sweep['id']}/tensorboard", headers=admin).status_code == 200
    return sweep["id"]


def _cell_texts(page: Any) -> list[str]:
    """The text of every cell of the HParams table (header and rows, in document order), through shadow roots."""
    return page.evaluate("""() => {
        const texts = [];
        const walk = (node) => {
            if (node.shadowRoot) walk(node.shadowRoot);
            for (const child of node.children || []) walk(child);
            if (node.tagName === 'VAADIN-GRID-CELL-CONTENT') texts.push(node.textContent.trim());
        };
        walk(document.body);
        return texts;
    }""")


def test_tensorboard_shows_every_varying_hparam_and_lists_trials_in_number_order(
        server: RunningServer, tokens: dict[str, str], logged_sweep: int, browser: Any) -> None:
    page = browser.new_context(viewport={"width": 1600, "height": 1200}).new_page()
    expect = sync_api.expect
    page.goto(f"{server.url}/#/sweeps/{logged_sweep}")
    login = page.locator("dialog#login")
    login.locator("input[name=token]").fill(tokens["admin"])
    login.locator("button[type=submit]").click()
    expect(login).to_be_hidden()

    # TensorBoard's run list, as its frontend reads it: text order, which must be number order.
    runs = json.loads(page.evaluate(f"() => fetch('/tensorboard/{logged_sweep}/data/runs').then(r => r.text())"))
    trials = [f"trial-{number:04d}" for number in range(1, TRIALS + 1)]
    assert [run for run in runs if run != "."] == trials

    page.goto(f"{server.url}/tensorboard/{logged_sweep}/#hparams")
    # The table view lists the trials once TensorBoard has read them (a moment after it starts).
    deadline = time.monotonic() + TENSORBOARD_SECONDS
    while not set(trials) <= set(cells := _cell_texts(page)):
        assert time.monotonic() < deadline, f"the HParams table never listed every trial: {cells}"
        page.wait_for_timeout(500)
    shoot(page, "tensorboard-hparams-table")

    header = cells[:cells.index(trials[0])]
    columns = [text for text in header if text and text not in ("Trial ID", "Show Metrics")]
    hparams = columns[:len(VARYING)]
    assert set(hparams) == VARYING, f"the table's columns are {columns}"
    assert "batch_size" not in columns[:len(VARYING)]
    # Every hparam the sweep varies is ticked in the query pane; the fixed one is there, after them, unticked.
    boxes = page.locator("tf-hparams-query-pane .hparam paper-checkbox.hparam-checkbox")
    names = [text.strip() for text in boxes.all_inner_texts()]
    assert names[-1] == "batch_size" and set(names[:-1]) == VARYING, names
    ticked = [boxes.nth(i).get_attribute("aria-checked") for i in range(len(names))]
    assert ticked == ["true"] * len(VARYING) + ["false"], dict(zip(names, ticked))
    # And the trials' rows come in number order.
    assert [text for text in cells if re.fullmatch(r"trial-\d+", text)] == trials

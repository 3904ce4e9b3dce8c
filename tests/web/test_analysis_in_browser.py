"""The sweep page's analysis views in a real browser, and its layout measured at a laptop's width (1280 px) and
a wide monitor's (1920 px): parameter importance, the objective against each hparam, the curves of several
trials overlaid, exports, the best configuration copied as YAML, a running trial's epoch and estimated finish,
the workers view, and failed trials counted in red. The sweep's trials are reported through the worker
protocol by the test (a known objective, no training), so every figure on the page is known in advance.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from test_pruned_trials_in_browser import shoot, sync_api

from api.server import RunningServer

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

EPOCHS = 4
SPEC: dict[str, Any] = {
    "name": "web-analysis", "model": "mlp", "dataset": "digits",
    "objective": {"metric": "val_loss", "goal": "minimize"},
    "hparams": {"units": {"type": "discrete", "values": [16, 32, 64]},
                "dropout": {"type": "real_interval", "min": 0.1, "max": 0.5},
                "learning_rate": {"type": "real_interval", "min": 1e-4, "max": 1e-1, "log": True},
                "batch_size": 64},
    "search": {"strategy": "random", "max_trials": 12, "seed": 3},
    "train": {"epochs": EPOCHS},
}
COMPLETED = 8


def val_loss(hparams: dict[str, Any], epoch: int = EPOCHS - 1) -> float:
    """The learning rate decides it (the smaller the better); it falls with the epochs."""
    return math.log10(hparams["learning_rate"]) + 4 + 0.001 * hparams["dropout"] + 0.3 / (epoch + 1)


@pytest.fixture
def sweep(server: RunningServer, tokens: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A sweep with 8 completed trials, 1 failed, and 1 running at epoch 2 of 4 (held by worker web-0)."""
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    worker = {"Authorization": f"Bearer {tokens['worker']}"}
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as api:
        created = api.post("/sweeps", json=SPEC, headers=admin).json()

        def claim(worker_id: str) -> dict[str, Any]:
            answer = api.post("/trials/claim", json={"worker_id": worker_id, "host": "box", "gpu": "0"}, headers=worker)
            assert answer.status_code == 200, answer.text
            return answer.json()

        def send(assignment: dict[str, Any], worker_id: str, action: str, **body: Any) -> None:
            answer = api.post(f"/trials/{assignment['trial_id']}/{action}", headers=worker,
                              json={"worker_id": worker_id, "lease_token": assignment["lease_token"], **body})
            assert answer.status_code == 200, answer.text

        for _ in range(COMPLETED):
            assignment = claim("web-1")
            hparams = assignment["hparams"]
            for epoch in range(EPOCHS):
                # The learning rate decays by a decade an epoch: on a linear axis, all but the first are zero.
                send(assignment, "web-1", "metrics", epoch=epoch, metrics={
                    "loss": val_loss(hparams, epoch) + 0.05, "val_loss": val_loss(hparams, epoch),
                    "learning_rate": hparams["learning_rate"] / 10 ** epoch})
            send(assignment, "web-1", "complete", metrics={"loss": val_loss(hparams) + 0.05, "val_loss": val_loss(hparams),
                                                          "learning_rate": hparams["learning_rate"] / 1000})
        send(claim("web-1"), "web-1", "fail", error="=ResourceExhaustedError: out of memory", retryable=False)
        running = claim("web-0")
        for epoch in range(2):
            send(running, "web-0", "metrics", epoch=epoch, metrics={"val_loss": 1.0, "learning_rate": 0.01})
        read = api.get(f"/sweeps/{created['id']}", headers=admin).json()
        assert read["trial_counts"]["completed"] == COMPLETED and read["trial_counts"]["failed"] == 1
        yield {**read, "running_trial": running["trial_id"]}


def open_page(browser: Any, server: RunningServer, tokens: dict[str, str], path: str, width: int = 1280,
              **context: Any) -> tuple[Any, list[str]]:
    page = browser.new_context(viewport={"width": width, "height": 900}, **context).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server.url}/{path}")
    login = page.locator("dialog#login")
    login.locator("input[name=token]").fill(tokens["admin"])
    login.locator("button[type=submit]").click()
    sync_api.expect(login).to_be_hidden()
    return page, errors


# Everything on the page that holds text and must show all of it: cells, labels, legends, tabs, facts.
CUT_OFF = """() => {
  const selectors = ['.trials-table th', '.trials-table td', '.legend .key', '.tabs button', '.facts dt', '.facts dd',
                     '.exports .button', '.exports button', '.importance th', '.progress-text', 'figcaption', '.card-head h2'];
  const cut = [];
  for (const element of document.querySelectorAll(selectors.join(','))) {
    if (element.offsetParent === null) continue;  // hidden
    if (element.scrollWidth > element.clientWidth + 1) cut.push(`${element.className || element.tagName}: ${element.textContent.trim().slice(0, 40)} (${element.scrollWidth} > ${element.clientWidth})`);
  }
  return cut;
}"""
BOX = "selector => { const r = document.querySelector(selector).getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }"
CHART_TEXT = """() => [...document.querySelectorAll('svg.chart text.tick, svg.chart text.label')].filter(t => t.getBBox().width > 0)
  .map(t => ({ font: getComputedStyle(t).fontSize, height: Math.round(t.getBoundingClientRect().height) }))"""
SVG_SCALE = """() => [...document.querySelectorAll('svg.chart')].map(svg => svg.getBoundingClientRect().width / svg.viewBox.baseVal.width)"""


def overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_the_layout_keeps_the_table_whole_and_chart_text_one_size_from_laptop_to_wide_monitor(
        server: RunningServer, tokens: dict[str, str], browser: Any, sweep: dict[str, Any]) -> None:
    expect = sync_api.expect
    page, errors = open_page(browser, server, tokens, f"#/sweeps/{sweep['id']}")
    fonts: dict[int, set[str]] = {}
    for width in (1280, 1920):
        page.set_viewport_size({"width": width, "height": 900})
        page.locator("#view").evaluate("view => view.scrollIntoView()")
        expect(page.locator(".objective-chart svg.chart")).to_be_visible()
        expect(page.locator(".trials-table tbody tr")).to_have_count(COMPLETED + 2)
        page.wait_for_function("() => document.querySelector('.objective-chart svg.chart').getBoundingClientRect().width"
                               " >= document.querySelector('.objective-fit').clientWidth - 1")
        table_before = page.evaluate(BOX, ".trials-table")

        page.locator(".trials-table tbody tr").first.click()
        expect(page.locator(".trial-panel .curves svg.chart").first).to_be_visible()
        table, panel = page.evaluate(BOX, ".trials-table"), page.evaluate(BOX, ".trial-panel")
        # The open trial takes none of the table's room: it is below it, and the table keeps its width.
        assert not overlap(table, panel), (table, panel)
        assert panel[1] >= table[3]
        assert table[2] - table[0] == pytest.approx(table_before[2] - table_before[0], abs=1)
        assert page.evaluate(CUT_OFF) == [], width
        # Charts are drawn at their real size: one SVG unit is one CSS pixel, whatever the window.
        assert page.evaluate(SVG_SCALE) == pytest.approx([1.0] * len(page.evaluate(SVG_SCALE)), abs=0.01)
        texts = page.evaluate(CHART_TEXT)
        assert texts, "no chart text found"
        fonts[width] = {text["font"] for text in texts}
        assert {text["height"] for text in texts} <= {12, 13, 14, 15}, texts
        shoot(page, f"analysis-layout-{width}")
        page.locator(".trial-panel button[aria-label=close]").click()
    assert fonts[1280] == fonts[1920] == {"11px"}
    assert errors == []


def test_the_objective_chart_has_a_legend_and_a_trial_lists_its_learning_rate_once_on_a_log_chart(
        server: RunningServer, tokens: dict[str, str], browser: Any, sweep: dict[str, Any]) -> None:
    expect = sync_api.expect
    page, errors = open_page(browser, server, tokens, f"#/sweeps/{sweep['id']}")
    expect(page.locator(".objective-legend .key")).to_have_text([f"completed trial ({COMPLETED})",
                                                                 "best so far (minimize)", "best trial"])
    page.locator(".trials-table tbody tr").first.click()
    panel = page.locator(".trial-panel")
    expect(panel.locator(".curves svg.chart")).to_have_count(2)  # loss, and the learning rate (val_loss is in Loss)
    expect(panel.locator(".facts dt", has_text="learning_rate")).to_have_count(1)
    expect(panel.locator(".hparam-facts dt")).to_have_text(["units", "dropout", "learning_rate", "batch_size"])
    expect(panel.locator(".metric-facts dt")).to_have_text(["loss", "val_loss"])
    rate = panel.locator("figure.curve", has_text="Learning rate")
    expect(rate).to_have_attribute("data-scale", "log")
    # Four epochs a decade apart sit evenly on a log axis: equal vertical steps, none flattened to the axis.
    heights = rate.locator("circle.series-dot").evaluate_all("dots => dots.map(dot => Number(dot.getAttribute('cy')))")
    steps = [later - earlier for earlier, later in zip(heights, heights[1:])]
    assert len(steps) == EPOCHS - 1 and all(step == pytest.approx(steps[0], abs=0.5) for step in steps), heights
    shoot(page, "analysis-trial-log-rate")
    assert errors == []


def test_importance_slices_and_compared_curves(server: RunningServer, tokens: dict[str, str], browser: Any,
                                               sweep: dict[str, Any]) -> None:
    expect = sync_api.expect
    page, errors = open_page(browser, server, tokens, f"#/sweeps/{sweep['id']}")
    analysis = page.locator(".analysis")

    # Parameter importance, from the server's fANOVA: the learning rate decides the objective.
    rows = analysis.locator("table.importance tr")
    expect(rows).to_have_count(3)
    expect(rows.first).to_have_attribute("data-hparam", "learning_rate")
    expect(analysis.locator(".pane-note")).to_contain_text(f"over {COMPLETED} completed trials")
    analysis.locator("select.evaluator").select_option("ped_anova")
    expect(rows.first).to_have_attribute("data-hparam", "learning_rate")
    shoot(page, "analysis-importance")

    # The objective against each searched hparam: a log axis for the log-scaled one, bands for the discrete one.
    analysis.get_by_role("tab", name="Objective per hparam").click()
    slices = analysis.locator("figure.slice")
    expect(slices).to_have_count(3)
    expect(slices.locator("figcaption")).to_have_text(["units", "dropout", "learning_rate (log scale)"])
    assert [slices.nth(i).get_attribute("data-scale") for i in range(3)] == ["discrete", "linear", "log"]
    expect(slices.nth(0).locator("text.tick.x")).to_have_text(["16", "32", "64"])
    expect(slices.nth(2).locator("text.tick.x")).to_contain_text(["1.00e-4", "0.001", "0.01", "0.1"])
    dots = slices.nth(2).locator("path.dots").get_attribute("d")
    assert dots is not None and dots.count("M") == COMPLETED
    shoot(page, "analysis-slices")

    # Three trials ticked in the table: one chart, a line and a legend entry each.
    boxes = page.locator(".trials-table input.compare-box")
    numbers = []
    for row in range(3):
        boxes.nth(row).check()
        numbers.append(page.locator(".trials-table tbody tr").nth(row).get_attribute("data-trial-id"))
    expect(page.locator(".trial-panel")).to_be_hidden()  # ticking does not open the trial
    analysis.get_by_role("tab", name="Compare trials (3)").click()
    compare = analysis.locator(".pane-compare")
    expect(compare.locator("svg.chart path.series")).to_have_count(3)
    expect(compare.locator(".legend .key")).to_have_count(3)
    expect(compare.locator("figcaption")).to_have_text("val_loss")
    compare.locator("select.compare-metric").select_option("learning_rate")
    expect(compare.locator("figure.curve")).to_have_attribute("data-scale", "log")
    compare.locator(".chip button").first.click()
    expect(compare.locator("svg.chart path.series")).to_have_count(2)
    expect(boxes.nth(0)).not_to_be_checked()
    shoot(page, "analysis-compare")
    assert errors == []


def test_exports_and_the_best_configuration_copied_as_yaml(server: RunningServer, tokens: dict[str, str],
                                                           browser: Any, sweep: dict[str, Any]) -> None:
    expect = sync_api.expect
    page, errors = open_page(browser, server, tokens, f"#/sweeps/{sweep['id']}", accept_downloads=True,
                             permissions=["clipboard-read", "clipboard-write"])
    with page.expect_download() as download:
        page.locator("#export-csv").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert download.value.suggested_filename == f"sweep-{sweep['id']}-trials.csv"
    assert len(rows) == COMPLETED + 2 and rows[0]["hparams.units"] and rows[0]["metrics.val_loss"]
    with page.expect_download() as download:
        page.locator("#export-json").click()
    assert len(__import__("json").loads(Path(download.value.path()).read_text())["trials"]) == COMPLETED + 2

    page.locator("#copy-best").click()
    expect(page.locator(".copy-status")).to_contain_text("Copied trial")
    copied = page.evaluate("() => navigator.clipboard.readText()")
    assert yaml.safe_load(copied) == {"hparams": sweep["best_trial"]["hparams"]}
    shoot(page, "analysis-copied")
    # Whatever the value, the snippet reads back as the same value and type (PyYAML reads 1e-05 as a string).
    values = [1e-05, 0.001, 3, -2.5e-7, True, "adam", "yes", "1.5", "a: b", "null", None]
    written = page.evaluate("async values => (await import('/static/best_config.js')).bestConfigYaml("
                            "{id: 1, number: 1, hparams: Object.fromEntries(values.map((v, i) => [`h${i}`, v]))})",
                            values)
    assert yaml.safe_load(written) == {"hparams": {f"h{i}": value for i, value in enumerate(values)}}
    assert errors == []


def test_running_trials_show_their_epoch_and_finish_and_the_workers_view_what_each_runs(
        server: RunningServer, tokens: dict[str, str], browser: Any, sweep: dict[str, Any]) -> None:
    expect = sync_api.expect
    page, errors = open_page(browser, server, tokens, f"#/sweeps/{sweep['id']}")
    running = page.locator(f".trials-table td.state[data-trial-id='{sweep['running_trial']}'] .epoch-progress")
    expect(running.locator(".epoch-text")).to_have_text(f"epoch 2 of {EPOCHS}")
    expect(running.locator(".eta")).to_contain_text("left")

    # Failed trials are counted in red, on the sweep's progress bar and on the sweeps list.
    failed = page.locator(".summary .progress-failed")
    expect(failed).to_have_text(" · 1 failed")
    assert failed.evaluate("element => getComputedStyle(element).color") == "rgb(197, 48, 48)"

    page.get_by_role("link", name="Workers").click()
    rows = page.locator(".workers-table tbody tr")
    expect(rows).to_have_count(2)
    busy = page.locator(".workers-table tr[data-worker-id='web-0']")
    expect(busy.locator(".badge")).to_have_text("busy")
    expect(busy.locator(".running a")).to_have_text("web-analysis · trial 10")
    expect(busy.locator(".epoch-text")).to_have_text(f"epoch 2 of {EPOCHS}")
    expect(page.locator(".workers-table tr[data-worker-id='web-1'] .badge")).to_have_text("idle")
    shoot(page, "analysis-workers")

    page.get_by_role("link", name="Sweeps").click()
    listed = page.locator(f".sweeps-table tr[data-sweep-id='{sweep['id']}'] .progress-failed")
    expect(listed).to_have_text(" · 1 failed")
    assert listed.evaluate("element => getComputedStyle(element).color") == "rgb(197, 48, 48)"
    assert errors == []


def test_a_resumed_trial_is_paced_by_the_epochs_of_its_current_attempt_alone(
        server: RunningServer, tokens: dict[str, str], browser: Any) -> None:
    # Five epochs came from the attempt before the restart; one, a minute long, from this one.
    page, errors = open_page(browser, server, tokens, "#/")
    now = 1_700_000_000_000
    started = "2023-11-14T22:12:20Z"  # now - 60 s
    trial = {"state": "running", "started_at": started,
             "history": [{"epoch": epoch, "reported_at": "2023-11-14T21:00:00Z"} for epoch in range(5)]
             + [{"epoch": 5, "reported_at": "2023-11-14T22:13:19Z"}]}

    progress = page.evaluate("async ([trial, now]) => (await import('/static/progress.js')).trialProgress(trial, 10, now)",
                             [trial, now])

    assert progress == {"done": 6, "epochs": 10, "secondsLeft": 240}
    assert errors == []

"""The web page in a real browser: Playwright driving Debian's headless Chromium against a real server (with
tokens) and a real worker process. It logs in, creates a sweep through the form (a bad field first, and a
pasted spec with a mistake), watches it finish, sorts the trials, opens a trial's curves, follows the
TensorBoard link, reads a failed trial's reason and traceback, and pauses, resumes and cancels a sweep.
Screenshots of every step go to test-artifacts/screenshots/ at the repository root.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

from browser_testing import CHROMIUM, sync_api  # noqa: E402  (skips the module without them)

from api.server import RunningServer  # noqa: E402

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
SWEEP_SECONDS = 300
"""Three trials of two epochs on CPU, with TensorFlow's import first, on a busy machine."""
TENSORBOARD_SECONDS = 120


def spec_of(name: str, *, dataset: str = "digits", epochs: int = 1) -> dict[str, Any]:
    """A one-trial sweep, for what the test does through the API."""
    return {"name": name, "model": "mlp", "dataset": dataset, "objective": {"metric": "val_accuracy"},
            "hparams": {"units": 16}, "search": {"strategy": "grid"}, "train": {"epochs": epochs}}


@pytest.fixture
def api(server: RunningServer, tokens: dict[str, str]) -> Iterator[httpx.Client]:
    """The REST API as an admin, to check what the page did."""
    with httpx.Client(base_url=f"{server.url}/api/v1", headers={"Authorization": f"Bearer {tokens['admin']}"},
                      timeout=30) as client:
        yield client


@pytest.fixture
def start_worker(server: RunningServer, tokens: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Starts `python -m workers.agent` with the worker token; stopped (its log shown on failure) at teardown."""
    started: list[subprocess.Popen[bytes]] = []
    log = tmp_path / "worker.log"

    def start() -> subprocess.Popen[bytes]:
        (tmp_path / "data").mkdir(exist_ok=True)  # the worker's data root (./data), where npz: datasets are
        env = {**os.environ, "SWEEPER_TOKEN": tokens["worker"], "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        with log.open("w") as output:
            process = subprocess.Popen([sys.executable, "-m", "workers.agent", "--server", server.url,
                                        "--worker-id", "web-cpu0", "--idle-exit", "600", "--poll-interval", "0.5"],
                                       stdout=output, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(f"--- worker log\n{log.read_text()[-4000:]}")


@pytest.fixture
def shots() -> Any:
    """`shots(page, name)` saves a numbered full-page screenshot, replacing the previous run's."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("page-*.png"):
        old.unlink()
    taken: list[str] = []

    def shoot(page: Any, name: str) -> None:
        taken.append(name)
        page.screenshot(path=str(SCREENSHOTS / f"page-{len(taken):02d}-{name}.png"), full_page=True)

    return shoot


def test_a_sweep_created_in_the_page_is_watched_to_the_end_and_opened_in_tensorboard(
        server: RunningServer, api: httpx.Client, tokens: dict[str, str], start_worker: Any, browser: Any,
        shots: Any) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []
    # Offline: anything the page asks of another host is refused and recorded.
    context.route(re.compile(r"^(?!" + re.escape(server.url) + r")(https?|wss?)://"),
                  lambda route: (outside.append(route.request.url), route.abort()))
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    expect = sync_api.expect
    try:
        # The page shell loads without a token; its first API call answers 401 and the token prompt opens.
        page.goto(server.url)
        login = page.locator("dialog#login")
        expect(login).to_be_visible()
        login.locator("input[name=token]").fill("not-the-token-" + "x" * 20)
        login.locator("button[type=submit]").click()
        expect(login.locator("#login-error")).to_have_text("That token is not valid.")
        shots(page, "login-refused")
        login.locator("input[name=token]").fill(tokens["admin"])
        login.locator("button[type=submit]").click()
        expect(login).to_be_hidden()
        expect(page.locator(".sweeps .empty")).to_contain_text("No sweeps yet")
        shots(page, "logged-in-no-sweeps")

        # The form, with a bad field: the problem shows next to it and nothing is created.
        page.get_by_role("link", name="New sweep").first.click()
        form = page.locator("form.sweep-form")
        form.locator("input[name=name]").fill("web-digits")
        expect(form.locator("select[name=model] option[value=mlp]")).to_have_count(1)  # from GET /registry
        rows = form.locator("tr.hparam-row")
        rows.nth(0).locator("[name=hparam-values]").fill("16, 32")
        form.get_by_role("button", name="+ Add hyperparameter").click()
        dropout = rows.nth(2)
        dropout.locator("[name=hparam-name]").fill("dropout")
        dropout.locator("[name=hparam-type]").select_option("real_interval")
        dropout.locator("[name=hparam-min]").fill("0.5")
        dropout.locator("[name=hparam-max]").fill("0.1")
        form.locator("input[name=max_trials]").fill("3")
        form.locator("input[name=epochs]").fill("2")
        form.get_by_role("button", name="Create sweep").click()
        expect(dropout.locator(".field-error").first).to_have_text("min (0.5) must be < max (0.1)")
        expect(dropout.locator("[name=hparam-name]")).to_have_attribute("aria-invalid", "true")
        shots(page, "validation-error-inline")
        assert api.get("/sweeps").json()["count"] == 0

        # A pasted spec (YAML) with a mistake: the problem is listed under the box with its path and line.
        page.get_by_role("tab", name="Paste YAML or JSON").click()
        paste = page.locator("form.paste")
        paste.locator("textarea").fill("name: pasted\nmodel: mlp\ndataset: digits\nobjective: {metric: val_accuracy}\n"
                                        "hparams:\n  units: {type: discrete, values: [16]}\n"
                                        "  dropout: {type: real_interval, min: 0.5, max: 0.1}\n")
        paste.get_by_role("button", name="Create sweep").click()
        problem = paste.locator(".problems li")
        expect(problem).to_have_count(1)
        expect(problem.locator(".line")).to_have_text("line 7")
        expect(problem.locator("code")).to_have_text("hparams.dropout")
        expect(problem).to_contain_text("min (0.5) must be < max (0.1)")
        paste.locator("textarea").fill("name: pasted\nhparams: {units: [16\n")
        paste.get_by_role("button", name="Check").click()
        expect(problem.locator(".line")).to_have_text(re.compile(r"^line \d+$"))
        expect(problem).to_contain_text("invalid YAML")
        shots(page, "paste-problems")
        assert api.get("/sweeps").json()["count"] == 0
        page.get_by_role("tab", name="Form").click()

        # Fixed, it is created and the page moves to the sweep; a worker trains it.
        dropout.locator("[name=hparam-min]").fill("0.0")
        dropout.locator("[name=hparam-max]").fill("0.3")
        form.get_by_role("button", name="Create sweep").click()
        page.wait_for_url(re.compile(r"#/sweeps/\d+$"))
        sweep_id = int(page.url.rsplit("/", 1)[1])
        sweep = api.get(f"/sweeps/{sweep_id}").json()
        assert sweep["name"] == "web-digits" and sweep["total_trials"] == 3
        assert set(sweep["spec"]["hparams"]) == {"units", "learning_rate", "dropout"}
        start_worker()
        shots(page, "sweep-created")

        # The sweep page updates itself: the first completed trial shows on the chart.
        expect(page.locator(".chart-box svg.chart path.dots")).to_have_count(1, timeout=SWEEP_SECONDS * 1000)
        shots(page, "sweep-page-first-trial")

        # The sweeps list, without a reload, until the sweep is done.
        page.get_by_role("link", name="Sweeps", exact=True).click()
        row = page.locator(f".sweeps-table tr[data-sweep-id='{sweep_id}']")
        expect(row.locator(".badge")).to_have_text("completed", timeout=SWEEP_SECONDS * 1000)
        expect(row.locator(".progress-text")).to_have_text("3 / 3")
        best = api.get(f"/sweeps/{sweep_id}").json()["best_trial"]
        expect(row.locator("td.number")).to_have_text(re.compile(r"^0\.\d+$"))
        shots(page, "sweeps-list-completed")

        # The sweep page: progress, the best trial highlighted, the chart with every trial.
        row.get_by_role("link", name="web-digits").click()
        expect(page.locator(".summary .progress-text")).to_have_text("3 / 3")
        expect(page.locator(".sweep-page .toolbar .badge")).to_have_text("completed")
        expect(page.locator(".trials-table tbody tr")).to_have_count(3)
        expect(page.locator(".trials-table tr.best")).to_have_attribute("data-trial-id", str(best["id"]))
        # A trial is named by its number in the sweep, as the CLI and TensorBoard name it; never its id or index.
        expect(page.locator(".trials-table tr.best td.number").first).to_have_text(f"{best['number']} ★")
        expect(page.locator(".facts .best-value a")).to_have_text(f"trial {best['number']}")
        expect(page.locator(".chart-box svg.chart")).to_have_attribute("aria-label",
                                                                        re.compile("of 3 completed trials"))
        shots(page, "sweep-page-completed")

        # Sorted by the objective, best first (the server sorts), then the other way.
        page.locator("button.sort[data-sort=objective]").click()
        expect(page.locator("th[aria-sort=descending] button.sort[data-sort=objective]")).to_have_count(1)
        expect(page.locator(".trials-table tbody tr").first).to_have_attribute("data-trial-id", str(best["id"]))
        # Columns: the compare box, #, state, the objective, then the hparams.
        values = [float(text) for text in page.locator(".trials-table tbody tr td:nth-child(4)").all_inner_texts()]
        assert values == sorted(values, reverse=True)
        page.locator("button.sort[data-sort='hparams.units']").click()
        expect(page.locator("th[aria-sort=ascending] button.sort[data-sort='hparams.units']")).to_have_count(1)
        units = [int(text) for text in page.locator(".trials-table tbody tr td:nth-child(5)").all_inner_texts()]
        assert units == sorted(units)
        shots(page, "trials-sorted")

        # A trial's learning curve and learning-rate curve, on click.
        page.locator(f".trials-table tr[data-trial-id='{best['id']}']").click()
        panel = page.locator(".trial-panel")
        expect(panel).to_be_visible()
        expect(panel.locator("h2")).to_have_text(f"Trial {best['number']}")
        expect(panel.locator(".card-head .id")).to_have_text(f"id {best['id']}")
        expect(panel.locator("figure.curve figcaption")).to_have_text(["Loss", "val_accuracy", "Learning rate (log scale)"])
        # One line per series through a point per epoch: loss and val_loss, then the learning rate.
        for curve, series in (("Loss", 2), ("Learning rate", 1)):
            figure = panel.locator("figure.curve", has_text=curve)
            expect(figure.locator("path.series")).to_have_count(series)
            expect(figure.locator("path.series").first).to_have_attribute("d", re.compile(r"^M[\d.]+,[\d.]+L[\d.,]+$"))
            expect(figure.locator("circle.series-dot")).to_have_count(2 * series)
        shots(page, "trial-curves")
        assert outside == [], f"the page asked other hosts for {outside}"
        assert errors == [], errors

        # TensorBoard for exactly this sweep, started on demand, through the server (same origin, same cookie).
        with context.expect_page(timeout=TENSORBOARD_SECONDS * 1000) as opened:
            page.get_by_role("link", name="Open in TensorBoard").click()
        board = opened.value
        board.wait_for_url(re.compile(rf"/tensorboard/{sweep_id}/#hparams$"), timeout=TENSORBOARD_SECONDS * 1000)
        # The HParams dashboard lists the sweep's hparams (its views live in shadow DOM; Playwright pierces it).
        for hparam in ("units", "dropout", "learning_rate"):
            expect(board.get_by_text(hparam, exact=True).first).to_be_visible(timeout=TENSORBOARD_SECONDS * 1000)
        shots(board, "tensorboard-hparams")
        board.close()

        # A failed trial: its reason in the table, its traceback on click.
        broken = api.post("/sweeps", json=spec_of("web-broken", dataset="npz:missing.npz")).json()["id"]
        page.goto(f"{server.url}/#/sweeps/{broken}")
        expect(page.locator(".trials-table td.failure")).to_contain_text("'missing.npz' does not exist",
                                                                           timeout=120_000)
        page.locator(".trials-table tbody tr").first.click()
        expect(panel.locator(".failure-reason")).to_contain_text("'missing.npz' does not exist")
        panel.locator("summary", has_text="Traceback").click()
        expect(panel.locator(".failure-reason pre")).to_contain_text("Traceback (most recent call last)")
        shots(page, "failed-trial")

        # Pause, Resume and Cancel.
        controlled = api.post("/sweeps", json=spec_of("web-controlled", epochs=500)).json()["id"]
        page.goto(f"{server.url}/#/sweeps/{controlled}")
        status = page.locator(".sweep-page .toolbar .badge")
        page.get_by_role("button", name="Pause").click()
        expect(status).to_have_text("paused")
        page.get_by_role("button", name="Resume").click()
        expect(status).to_have_text("running")
        page.once("dialog", lambda dialog: dialog.accept())  # "Cancel sweep web-controlled?"
        page.get_by_role("button", name="Cancel").click()
        expect(status).to_have_text("cancelled")
        expect(page.get_by_role("button", name="Resume")).to_have_count(0)
        shots(page, "sweep-cancelled")
        assert api.get(f"/sweeps/{controlled}").json()["status"] == "cancelled"
    except Exception:
        shots(page, "failure")
        raise
    finally:
        context.close()

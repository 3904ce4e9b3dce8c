"""Benchmark: how fast the web page renders with 1,000 sweeps, and with a sweep of 10,000 trials.

A real server process (`sweeper serve`, SQLite in a temporary folder, no tokens) over a database filled
directly through SQLAlchemy (the API would take minutes): 1,000 sweeps of 4 completed trials each, plus
one sweep of 10,000 trials (a few failed). Debian's headless Chromium, driven by Playwright, then
measures, each several times on a fresh navigation:

- the sweeps list: from navigation start to the first page of sweeps rendered (the issue's target:
  under 200 ms);
- the big sweep's page: from navigation start to its first full render (progress, the trials table,
  the objective chart with all 10,000 points);
- on that page, from the click to the table rendered again: sorting by the objective, sorting by an
  hparam, and the next page;
- on that page, from the click on the "Objective per hparam" tab to its slice plots of every completed
  trial drawn.

The page marks each render with `performance.mark` (sweeps-rendered, sweep-rendered,
trials-rendered, slices-rendered), so the figures are the browser's own clock. The API calls behind them are timed
from here too, with parameter importance (fANOVA's first, uncached evaluation apart from its cached
answers) and the CSV export. Prints a table; `make bench` runs it. Exits 2 when Chromium or Playwright is missing.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

BIN = Path(sys.executable).parent
STATIC = Path(__file__).resolve().parents[1] / "api" / "web" / "static"
QUIET = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"}
SPEC: dict[str, Any] = {
    "name": "bench", "model": "mlp", "dataset": "digits",
    "objective": {"metric": "val_accuracy", "goal": "maximize"},
    "hparams": {"units": {"type": "discrete", "values": [16, 32, 64, 128]},
                "dropout": {"type": "real_interval", "min": 0.0, "max": 0.5},
                "learning_rate": {"type": "real_interval", "min": 1e-4, "max": 1e-1, "log": True},
                "optimizer": {"type": "discrete", "values": ["adam", "sgd"]}},
    "search": {"strategy": "random", "max_trials": 10_000, "seed": 0},
    "train": {"epochs": 10},
}
LIST_TARGET_MS = 200.0
"""The issue's target for the sweeps list."""
LIST_PAGE = 25
"""Sweeps on one page of the list (api/web/static/sweeps.js)."""


@dataclass
class Measure:
    name: str
    samples: list[float]
    target_ms: float | None = None


# -- the data --------------------------------------------------------------------------------------------------


def fill_database(url: str, sweeps: int, big_trials: int, seed: int = 0) -> int:
    """`sweeps` small sweeps and one with `big_trials` trials, inserted in bulk; the big sweep's id."""
    from sqlalchemy import insert

    from sweeper import parse_spec

    from api.db import create_tables, make_engine, make_sessions
    from api.models import SweepRow, TrialRow

    rng = random.Random(seed)
    spec = parse_spec(SPEC).to_json()
    engine = make_engine(url)
    create_tables(engine)
    now = datetime.now(UTC)
    statuses = ["completed"] * 6 + ["running", "paused", "cancelled", "failed"]

    def trial(sweep_id: int, index: int, state: str, when: datetime) -> dict[str, Any]:
        hparams = {"units": rng.choice([16, 32, 64, 128]), "dropout": rng.uniform(0, 0.5),
                   "learning_rate": 10 ** rng.uniform(-4, -1), "optimizer": rng.choice(["adam", "sgd"])}
        row: dict[str, Any] = {"sweep_id": sweep_id, "index": index, "state": state, "hparams": hparams,
                               "metrics": {}, "attempts": 1, "worker_id": f"bench-{index % 8}", "created_at": when,
                               "started_at": when, "finished_at": when + timedelta(seconds=30)}
        if state == "completed":
            row["metrics"] = {"val_accuracy": rng.uniform(0.5, 0.99), "val_loss": rng.uniform(0.05, 2.0),
                              "loss": rng.uniform(0.05, 2.0), "accuracy": rng.uniform(0.5, 1.0)}
        else:
            row.update(error="ResourceExhaustedError: out of memory", failure_kind="oom",
                       traceback="Traceback (most recent call last):\n  ...\nResourceExhaustedError: OOM")
        return row

    with make_sessions(engine)() as session, session.begin():
        sweep_rows = [{"name": f"sweep-{number:04d}", "status": statuses[number % len(statuses)], "spec": spec,
                       "total_trials": 4, "next_index": 4, "created_at": now - timedelta(minutes=sweeps - number)}
                      for number in range(sweeps)]
        small_ids = session.execute(insert(SweepRow).returning(SweepRow.id), sweep_rows).scalars().all()
        big = session.execute(insert(SweepRow).returning(SweepRow.id), [{
            "name": "big-sweep", "status": "running", "spec": spec, "total_trials": big_trials,
            "next_index": big_trials, "created_at": now}]).scalar_one()
        trials = [trial(sweep_id, index, "completed", now - timedelta(hours=1))
                  for sweep_id in small_ids for index in range(4)]
        trials += [trial(big, index, "failed" if index % 200 == 199 else "completed",
                         now - timedelta(seconds=big_trials - index)) for index in range(big_trials)]
        session.execute(insert(TrialRow), trials)
    engine.dispose()
    return int(big)


# -- the server and the browser --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running_server(work: Path, database_url: str) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (work / "server.log").open("w")
    process = subprocess.Popen([str(BIN / "sweeper"), "serve", "--port", str(port), "--database-url", database_url,
                                "--logdir", str(work / "runs")], stdout=log, stderr=subprocess.STDOUT, env=QUIET)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{(work / 'server.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def api_timings(url: str, big: int, repeat: int) -> list[Measure]:
    calls = {
        f"API: GET /sweeps (a page of {LIST_PAGE})": f"/api/v1/sweeps?limit={LIST_PAGE}&offset=0",
        "API: GET /sweeps/{big} (counts, best)": f"/api/v1/sweeps/{big}",
        "API: GET /sweeps/{big}/objective (every trial)": f"/api/v1/sweeps/{big}/objective",
        "API: GET /sweeps/{big}/trials sorted by objective": f"/api/v1/sweeps/{big}/trials?limit=50&sort=objective",
        "API: GET /sweeps/{big}/trials sorted by an hparam":
            f"/api/v1/sweeps/{big}/trials?limit=50&sort=hparams.dropout",
    }
    measures = []
    with httpx.Client(base_url=url, timeout=600) as client:
        # Importance is computed once per completed count and then kept: its first answer is its real cost.
        for evaluator in ("fanova", "ped_anova"):
            started = time.perf_counter()
            client.get(f"/api/v1/sweeps/{big}/importance", params={"evaluator": evaluator}).raise_for_status()
            measures.append(Measure(f"API: GET /sweeps/{{big}}/importance?evaluator={evaluator} (first, computed)",
                                    [(time.perf_counter() - started) * 1000]))
        calls[f"API: GET /sweeps/{{big}}/importance (cached)"] = f"/api/v1/sweeps/{big}/importance"
        calls["API: GET /sweeps/{big}/trials.csv (every trial)"] = f"/api/v1/sweeps/{big}/trials.csv"
        for name, path in calls.items():
            samples = []
            for _ in range(repeat + 1):
                started = time.perf_counter()
                client.get(path).raise_for_status()
                samples.append((time.perf_counter() - started) * 1000)
            measures.append(Measure(name, samples[1:]))  # the first call warms the server's caches
    return measures


def mark_time(page: Any, name: str, timeout_ms: float = 60_000) -> float:
    """When the page first made the mark `name`, in ms since its navigation started."""
    page.wait_for_function(f"() => performance.getEntriesByName({name!r}).length > 0", timeout=timeout_ms)
    started: float = page.evaluate(f"() => performance.getEntriesByName({name!r})[0].startTime")
    return started


def click_to_render(page: Any, selector: str) -> float:
    """Ms from a click on `selector` to the trials table's next render.

    The click is dispatched inside the page, so the figure is the page's own work (its request and its
    render), without Playwright's checks before a click.
    """
    page.wait_for_selector(selector)
    page.evaluate("""selector => {
        window.benchRenders = performance.getEntriesByName('trials-rendered').length;
        window.benchStart = performance.now();
        document.querySelector(selector).click();
    }""", selector)
    page.wait_for_function("() => performance.getEntriesByName('trials-rendered').length > window.benchRenders")
    elapsed: float = page.evaluate("() => performance.getEntriesByName('trials-rendered').at(-1).startTime"
                                   " - window.benchStart")
    return elapsed


def click_to_mark(page: Any, selector: str, mark: str) -> float:
    """Ms from a click on `selector` to the page's next `mark`."""
    page.wait_for_selector(selector)
    page.evaluate("""([selector, mark]) => {
        window.benchMarks = performance.getEntriesByName(mark).length;
        window.benchStart = performance.now();
        document.querySelector(selector).click();
    }""", [selector, mark])
    page.wait_for_function("mark => performance.getEntriesByName(mark).length > window.benchMarks", arg=mark,
                           timeout=120_000)
    elapsed: float = page.evaluate("mark => performance.getEntriesByName(mark).at(-1).startTime - window.benchStart",
                                   mark)
    return elapsed


def browser_timings(url: str, big: int, repeat: int, chromium: str, sweeps: int, trials: int) -> list[Measure]:
    from playwright.sync_api import sync_playwright

    listing, sweep_page, chart, by_objective, by_hparam, next_page, slices = ([] for _ in range(7))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        for _ in range(repeat + 1):  # the first round warms the browser's cache and the server's
            page.goto("about:blank")
            page.goto(f"{url}/#/")
            listing.append(mark_time(page, "sweeps-rendered"))
            rows = page.locator(".sweeps-table tbody tr").count()
            assert rows == LIST_PAGE, f"the sweeps list shows {rows} rows, not a page of {LIST_PAGE}"
            # One request: the one index.html starts early is the one the list used.
            asked = page.evaluate("() => performance.getEntriesByType('resource')"
                                  ".filter(entry => entry.name.includes('/api/v1/sweeps?')).length")
            assert asked == 1, f"the sweeps list asked for its first page {asked} times"

            page.goto("about:blank")
            page.goto(f"{url}/#/sweeps/{big}")
            sweep_page.append(mark_time(page, "sweep-rendered"))
            chart.append(mark_time(page, "objective-rendered"))
            by_objective.append(click_to_render(page, "button.sort[data-sort=objective]"))
            by_hparam.append(click_to_render(page, "button.sort[data-sort='hparams.dropout']"))
            next_page.append(click_to_render(page, "button.next-page"))
            slices.append(click_to_mark(page, "button[data-tab=slices]", "slices-rendered"))
        browser.close()
    return [Measure(f"Sweeps list: navigation to rendered ({sweeps + 1:,} sweeps)", listing[1:], LIST_TARGET_MS),
            Measure(f"Sweep page: navigation to first render ({trials:,} trials)", sweep_page[1:]),
            Measure(f"Sweep page: objective chart of {trials:,} trials drawn", chart[1:]),
            Measure("Trials table: click to sorted by objective", by_objective[1:]),
            Measure("Trials table: click to sorted by an hparam", by_hparam[1:]),
            Measure("Trials table: click to next page", next_page[1:]),
            Measure(f"Analysis: click to the objective against each hparam ({trials:,} trials)", slices[1:])]


# -- the report ------------------------------------------------------------------------------------------------


def report(console: Console, measures: list[Measure], title: str) -> None:
    table = Table(title=title)
    for column in ("measure", "median ms", "max ms", "target"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for measure in measures:
        median, worst = statistics.median(measure.samples), max(measure.samples)
        if measure.target_ms is None:
            target = ""
        else:
            met = median < measure.target_ms
            target = f"[{'green' if met else 'red'}]< {measure.target_ms:.0f} {'met' if met else 'MISSED'}[/]"
        table.add_row(measure.name, f"{median:.1f}", f"{worst:.1f}", target)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=1000, help="small sweeps in the list (default 1000)")
    parser.add_argument("--trials", type=int, default=10_000, help="trials of the big sweep (default 10000)")
    parser.add_argument("--repeat", type=int, default=5, help="measured rounds, after one warm-up round")
    args = parser.parse_args()

    console = Console()
    chromium = shutil.which("chromium")
    if chromium is None:
        console.print("[red]Debian's chromium is not installed (apt-get install chromium): no page benchmark[/]")
        raise SystemExit(2)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        console.print("[red]the playwright package is not installed (pip install -e '.[dev]'): no page benchmark[/]")
        raise SystemExit(2) from None

    console.print(f"web page: {args.sweeps} sweeps + one of {args.trials} trials, headless Chromium, "
                  f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="sweeper-bench-page-") as tmp:
        work = Path(tmp)
        database_url = f"sqlite:///{work / 'sweeper.db'}"
        started = time.perf_counter()
        big = fill_database(database_url, args.sweeps, args.trials)
        console.print(f"database filled in {time.perf_counter() - started:.1f} s")
        with running_server(work, database_url) as url:
            api = api_timings(url, big, args.repeat)
            page = browser_timings(url, big, args.repeat, chromium, args.sweeps, args.trials)
    static_bytes = sum(file.stat().st_size for file in STATIC.iterdir())
    report(console, page, f"The page in headless Chromium (median of {args.repeat} navigations)")
    report(console, api, "The API calls behind it (from this process)")
    console.print(f"the page's own files: {math.ceil(static_bytes / 1024)} KiB uncompressed, no other host")


if __name__ == "__main__":
    main()

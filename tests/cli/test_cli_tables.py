"""`sweeper status` fits an 80-column terminal: for the example sweeps no line is longer and no cell is cut;
trials go by their number in the sweep; hparams every trial shares are listed once above the table; times
and durations are short; errors are keyed in the table and spelt out under it; --sort and --top pick rows."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from api.server import RunningServer
from cli import _console, app

EXAMPLES = Path(__file__).parents[2] / "examples"


def sweeper(server: RunningServer, *args: str, columns: int = 80) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--server", server.url], env={"COLUMNS": str(columns)})
    return result.exit_code, result.output


def run_sweep(server: RunningServer, spec: dict[str, Any], fail: int = 0) -> dict[str, Any]:
    """Submit the spec and play a worker through it: the first `fail` trials fail (a missing data file), the
    others complete with a made-up objective, each reported like a real worker's."""
    metric = spec["objective"]["metric"]
    scores = random.Random(0)
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=60) as api:
        sweep = api.post("/sweeps", json=spec).json()
        done = 0
        while (claim := api.post("/trials/claim", json={"worker_id": "w1", "host": "box"})).status_code == 200:
            trial = claim.json()
            body = {"worker_id": "w1", "lease_token": trial["lease_token"]}
            if done < fail:
                api.post(f"/trials/{trial['trial_id']}/fail", json={
                    **body, "error": "FileNotFoundError: [Errno 2] No such file or directory: 'data/nope.npz'\n"
                                     "Traceback (most recent call last): ...", "retryable": False})
            else:
                api.post(f"/trials/{trial['trial_id']}/complete", json={**body, "metrics": {
                    metric: scores.random(), "loss": scores.random()}})
            done += 1
        return api.get(f"/sweeps/{sweep['id']}").json()


def example(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return spec


@pytest.mark.parametrize(("name", "fail"), [("digits.yaml", 0), ("digits.yaml", 3), ("tuning.yaml", 0),
                                            ("cnn.yaml", 0), ("transfer.yaml", 0)])
def test_status_of_an_example_sweep_fits_80_columns_without_cutting_a_cell(server: RunningServer, name: str,
                                                                          fail: int) -> None:
    spec = example(name)
    if name == "tuning.yaml":
        spec["search"]["max_trials"] = 12  # TPE's first dozen: enough rows, and quick
    sweep = run_sweep(server, spec, fail=fail)

    code, output = sweeper(server, "status", str(sweep["id"]))

    assert code == 0, output
    lines = output.splitlines()
    assert max(len(line) for line in lines) <= 80, output
    assert "…" not in output, output
    # Every trial has its row, by number.
    numbers = [int(found[1]) for line in lines if (found := re.match(r"\s*(\d+) ", line))]
    assert numbers == list(range(1, sweep["total_trials"] + 1)), output


def test_the_list_of_sweeps_fits_80_columns_with_short_times_and_failed_counts(server: RunningServer) -> None:
    run_sweep(server, example("digits.yaml"), fail=12)
    run_sweep(server, example("cnn.yaml"))

    code, output = sweeper(server, "status")

    assert code == 0, output
    assert max(len(line) for line in output.splitlines()) <= 80, output
    assert "…" not in output, output
    # Its max_failures (5) failed in a row, so the sweep failed before handing out the rest.
    assert re.search(r"digits-mlp +failed +5/12 5 failed", output), output
    local = datetime.now(UTC).astimezone().strftime("%H:")
    assert local in output  # created today: "14:03", not an ISO timestamp
    assert "+00:00" not in output and "202" not in output


def test_trials_go_by_their_number_in_the_sweep_not_their_global_id(server: RunningServer) -> None:
    run_sweep(server, {**example("transfer.yaml"), "name": "first"})
    second = run_sweep(server, {**example("transfer.yaml"), "name": "second"})
    trials = httpx.get(f"{server.url}/api/v1/sweeps/{second['id']}/trials").json()["data"]
    assert [trial["id"] for trial in trials] == [5, 6, 7, 8]

    output = sweeper(server, "status", str(second["id"]))[1]

    assert [line.split()[0] for line in output.splitlines() if "completed " in line] == ["1", "2", "3", "4"]


def test_hparams_every_trial_shares_are_listed_once_above_the_table(server: RunningServer) -> None:
    sweep = run_sweep(server, example("transfer.yaml"))

    output = sweeper(server, "status", str(sweep["id"]))[1]

    assert output.startswith("Same in every trial: backbone=mobilenet_v3_small, weights=none, dropout=0.2, ")
    header = next(line for line in output.splitlines() if line.lstrip().startswith("#"))
    assert header.split() == ["#", "state", "val_accuracy", "frozen_layers", "head_units", "time"]


def test_errors_are_keyed_in_the_table_and_spelt_out_once_under_it(server: RunningServer) -> None:
    sweep = run_sweep(server, example("digits.yaml"), fail=2)

    output = sweeper(server, "status", str(sweep["id"]))[1]

    failed = [line for line in output.splitlines() if " failed " in line]
    assert len(failed) == 2 and all(line.rstrip().endswith("E1") for line in failed)
    assert "E1 FileNotFoundError: [Errno 2] No such file or directory: 'data/nope.npz'" in output
    assert "Traceback" not in output


def test_sort_and_top_show_the_best_trials_first(server: RunningServer) -> None:
    sweep = run_sweep(server, example("digits.yaml"))
    trials = httpx.get(f"{server.url}/api/v1/sweeps/{sweep['id']}/trials").json()["data"]
    best = sorted(trials, key=lambda trial: -trial["metrics"]["val_accuracy"])
    by_units = sorted(trials, key=lambda trial: (trial["hparams"]["units"], trial["number"]))

    top = sweeper(server, "status", str(sweep["id"]), "--top", "3")[1]
    units = sweeper(server, "status", str(sweep["id"]), "--sort", "units")[1]

    assert _numbers(top) == [trial["number"] for trial in best[:3]]
    assert "by objective" in top
    assert [trial["hparams"]["units"] for trial in by_units] == sorted(t["hparams"]["units"] for t in trials)
    assert [int(line.split()[0]) for line in units.splitlines() if "completed " in line][0] == by_units[0]["number"]


def _numbers(output: str) -> list[int]:
    return [int(line.split()[0]) for line in output.splitlines() if "completed " in line]


NOW = datetime(2026, 12, 4, 14, 30, tzinfo=UTC)


@pytest.mark.parametrize(("moment", "shown"), [
    (NOW - timedelta(minutes=27), "%H:%M"),  # today: the time
    (NOW - timedelta(days=1), "%b %d"),  # this year: the day
    (NOW - timedelta(days=400), "%Y-%m-%d"),
])
def test_times_are_short(moment: datetime, shown: str) -> None:
    assert _console.short_time(moment.isoformat(), NOW) == moment.astimezone().strftime(shown)


@pytest.mark.parametrize(("seconds", "shown"), [(4, "4s"), (130, "2m 10s"), (3 * 3600 + 300, "3h 05m"),
                                                (2 * 86400 + 4 * 3600, "2d 4h")])
def test_durations_are_short(seconds: float, shown: str) -> None:
    assert _console.duration(seconds) == shown


def test_a_running_trial_shows_how_long_it_has_run_so_far() -> None:
    started = (NOW - timedelta(minutes=2, seconds=10)).isoformat()
    assert _console.trial_time({"state": "running", "started_at": started, "finished_at": None}, NOW) == "2m 10s"
    assert _console.trial_time({"state": "pending", "started_at": None, "finished_at": None}, NOW) == ""


def test_a_sweep_with_more_hparams_than_fit_drops_the_time_column_before_cutting_a_cell() -> None:
    hparams = {f"hparam_{k}": {"type": "discrete", "values": [1000 + k, 2000 + k]} for k in range(7)}
    sweep = {"id": 1, "name": "wide", "status": "running", "total_trials": 2, "trial_counts": {"completed": 2},
             "spec": {"objective": {"metric": "val_accuracy"}, "hparams": hparams}}
    trials = [{"id": n, "number": n, "state": "completed", "attempts": 1, "metrics": {"val_accuracy": 0.5},
               "hparams": {name: domain["values"][n - 1] for name, domain in hparams.items()},
               "started_at": NOW.isoformat(), "finished_at": (NOW + timedelta(seconds=70)).isoformat()}
              for n in (1, 2)]
    console = Console(width=80, record=True)

    _console.print_trials(console, sweep, trials, now=NOW)

    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text, text
    assert "time" not in text and "1m 10s" not in text

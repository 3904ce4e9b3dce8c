"""`sweeper pause|resume|cancel ID` and `sweeper workers` against a real server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from api_testing import API, grid_spec
from rich.console import Console
from typer.testing import CliRunner

from api.server import RunningServer
from api.settings import Settings
from cli import _console, app


def sweeper(server: RunningServer, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--server", server.url], env={"COLUMNS": "200"})
    return result.exit_code, " ".join(result.output.split())


def test_pause_resume_and_cancel_say_the_new_status(server: RunningServer):
    sweep = httpx.post(f"{server.url}{API}/sweeps", json=grid_spec(name="g", values=3)).json()
    trial = httpx.post(f"{server.url}{API}/trials/claim", json={"worker_id": "w1", "host": "h"}).json()
    sweep_id = str(sweep["id"])

    assert sweeper(server, "pause", sweep_id) == (0, f"Sweep {sweep_id} g: paused; 1 running trial(s) will finish")
    assert sweeper(server, "resume", sweep_id) == (0, f"Sweep {sweep_id} g: running")
    assert sweeper(server, "cancel", sweep_id) == (
        0, f"Sweep {sweep_id} g: cancelled; 1 running trial(s) stop at their next heartbeat")
    beat = httpx.post(f"{server.url}{API}/trials/{trial['trial_id']}/heartbeat", json={"worker_id": "w1", "lease_token": trial["lease_token"]})
    assert beat.json() == {"action": "cancel"}


def test_an_invalid_transition_fails_with_the_servers_reason(server: RunningServer):
    sweep_id = str(httpx.post(f"{server.url}{API}/sweeps", json=grid_spec(values=1)).json()["id"])
    sweeper(server, "cancel", sweep_id)

    code, output = sweeper(server, "cancel", sweep_id)

    assert code == 1
    assert output == f"error: sweep {sweep_id} is cancelled: only a running or paused sweep can be cancelled"
    assert sweeper(server, "resume", "999") == (1, "error: sweep 999 not found")


def test_workers_prints_a_table_of_every_worker(server: RunningServer):
    httpx.post(f"{server.url}{API}/sweeps", json=grid_spec(values=1))
    trial = httpx.post(f"{server.url}{API}/trials/claim",
                       json={"worker_id": "box-gpu0", "host": "box", "gpu": "0"}).json()
    httpx.post(f"{server.url}{API}/trials/claim", json={"worker_id": "box-cpu0", "host": "box"})

    code, output = sweeper(server, "workers")

    assert code == 0
    assert "Workers (1 idle, 1 busy)" in output
    assert "box-cpu0 │ box │ cpu │ idle │ │" in output
    # The trial it holds, as sweep/number: trial 1 of the sweep.
    assert f"box-gpu0 │ box │ 0 │ busy │ {trial['sweep_id']}/1 │" in output


def test_workers_table_shows_lost_workers_and_how_long_ago_they_called():
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    seen = (now - timedelta(minutes=5, seconds=3)).isoformat().replace("+00:00", "Z")
    table = _console.workers_table([{"id": "w9", "host": "far", "gpu": None, "state": "lost", "trial_id": 7,
                                     "sweep_id": 2, "trial_number": 3, "last_heartbeat_at": seen}], now=now)
    console = Console(width=200, record=True)
    console.print(table)

    text = " ".join(console.export_text().split())

    assert "Workers (1 lost)" in text and "w9 │ far │ cpu │ lost │ 2/3 │ 5m ago" in text


def test_workers_with_none_seen_says_so(server: RunningServer):
    assert sweeper(server, "workers")[1].startswith("Workers: none seen yet")


def test_serve_takes_the_lease_and_heartbeat_from_flags_or_the_environment(monkeypatch: pytest.MonkeyPatch):
    import api.server

    served: list[Settings] = []
    monkeypatch.setattr(api.server, "serve", served.append)
    runner = CliRunner()

    assert runner.invoke(app, ["serve", "--lease-seconds", "30", "--heartbeat-seconds", "5"]).exit_code == 0
    assert runner.invoke(app, ["serve"], env={"SWEEPER_LEASE_SECONDS": "12"}).exit_code == 0

    assert (served[0].lease_seconds, served[0].heartbeat_interval) == (30.0, 5.0)
    assert (served[1].lease_seconds, served[1].heartbeat_interval) == (12.0, 2.0)


def test_serve_refuses_a_lease_shorter_than_two_heartbeats(monkeypatch: pytest.MonkeyPatch):
    import api.server

    monkeypatch.setattr(api.server, "serve", lambda settings: pytest.fail("must not serve"))

    result = CliRunner().invoke(app, ["serve", "--lease-seconds", "15", "--heartbeat-seconds", "10"],
                                env={"COLUMNS": "200"})

    assert result.exit_code == 2
    assert " ".join(result.output.split()) == (
        "error: lease_seconds (15) must last at least 2 heartbeats (20 s with heartbeat_seconds 10), or a worker "
        "that misses one beat loses its trial; raise lease_seconds or lower heartbeat_seconds")


def test_extend_gives_a_completed_sweep_more_trials_and_says_so(server: RunningServer):
    spec = grid_spec(name="g", values=4, search={"strategy": "grid", "max_trials": 1})
    sweep_id = str(httpx.post(f"{server.url}{API}/sweeps", json=spec).json()["id"])
    trial = httpx.post(f"{server.url}{API}/trials/claim", json={"worker_id": "w1", "host": "h"}).json()
    httpx.post(f"{server.url}{API}/trials/{trial['trial_id']}/complete",
               json={"worker_id": "w1", "lease_token": trial["lease_token"], "metrics": {"val_accuracy": 0.5}})

    assert sweeper(server, "extend", sweep_id, "--max-trials", "3") == (0, f"Sweep {sweep_id} g: running, 3 trials")
    code, output = sweeper(server, "extend", sweep_id, "--max-trials", "2")
    assert code == 1 and "max_trials: must be more than the sweep's 3 trials, but got 2" in output

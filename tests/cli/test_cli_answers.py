"""The commands a person types answer at once: no server means a one-line error within 2 s that names
--server and SWEEPER_SERVER; `submit` says how to follow the sweep; `submit --wait` exits non-zero, with the
first error, when the sweep failed or was cancelled."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from api.server import RunningServer
from cli import app

SPEC = {"name": "digits", "model": "mlp", "dataset": "digits",
        "objective": {"metric": "val_accuracy", "goal": "maximize"},
        "hparams": {"units": {"type": "discrete", "values": [8, 16, 32]}, "batch_size": 64},
        "search": {"strategy": "grid"}, "train": {"epochs": 1}}


def free_port() -> int:
    """A port nothing listens on: bound, then closed again."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def spec_file(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **changes}))
    return path


def sweeper(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    started = time.monotonic()
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})
    return result.exit_code, result.output, time.monotonic() - started


@pytest.mark.parametrize("command", [
    ["status"], ["status", "1"], ["cancel", "1"], ["pause", "1"], ["resume", "1"],
    ["extend", "1", "--max-trials", "9"], ["workers"], ["submit", "SPEC"],
])
def test_a_command_with_no_server_to_answer_fails_within_two_seconds_in_one_line(tmp_path: Path,
                                                                                 command: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    args = [str(spec_file(tmp_path)) if arg == "SPEC" else arg for arg in command]

    code, output, seconds = sweeper(*args, env={"SWEEPER_SERVER": url, "COLUMNS": "80"})

    assert seconds < 2, f"took {seconds:.1f} s"
    assert code == 1
    assert output.strip().count("\n") == 0, output
    assert "Traceback" not in output
    assert output.startswith(f"error: no sweeper server answers at {url}")
    assert "--server" in output and "SWEEPER_SERVER" in output


def test_submit_without_wait_says_how_to_follow_the_sweep(tmp_path: Path, server: RunningServer) -> None:
    code, output, _ = sweeper("submit", str(spec_file(tmp_path)), "--server", server.url)

    assert code == 0, output
    sweep_id = httpx.get(f"{server.url}/api/v1/sweeps").json()["data"][0]["id"]
    assert f"sweeper status {sweep_id} --server {server.url}" in output
    assert f"{server.url}/#/sweeps/{sweep_id}" in output
    assert "--wait" in output


def fail_every_trial(url: str, error: str, stop: threading.Event) -> None:
    """A worker whose every trial fails, as one whose data file is missing does."""
    with httpx.Client(base_url=f"{url}/api/v1", timeout=30) as api:
        while not stop.is_set():
            claim = api.post("/trials/claim", json={"worker_id": "w1", "host": "box"})
            if claim.status_code == 204:
                time.sleep(0.05)
                continue
            trial = claim.json()
            api.post(f"/trials/{trial['trial_id']}/fail", json={
                "worker_id": "w1", "lease_token": trial["lease_token"], "error": error, "retryable": False})


def test_submit_wait_on_a_sweep_whose_every_trial_failed_exits_non_zero_with_the_first_error(
        tmp_path: Path, server: RunningServer) -> None:
    stop = threading.Event()
    worker = threading.Thread(target=fail_every_trial, daemon=True,
                              args=(server.url, "FileNotFoundError: data/nope.npz does not exist", stop))
    worker.start()
    try:
        code, output, _ = sweeper("submit", str(spec_file(tmp_path, dataset="npz:nope.npz")), "--wait",
                                  "--server", server.url)
    finally:
        stop.set()
        worker.join()

    assert code == 1, output
    assert "failed: 3/3 trials finished (3 failed)" in output
    assert "trial 1: FileNotFoundError: data/nope.npz does not exist" in output
    assert "No trial completed." not in output


def test_submit_wait_on_a_cancelled_sweep_exits_non_zero(tmp_path: Path, server: RunningServer) -> None:
    def cancel_the_first_sweep() -> None:
        while httpx.post(f"{server.url}/api/v1/sweeps/1/cancel").status_code == 404:
            time.sleep(0.05)

    canceller = threading.Thread(target=cancel_the_first_sweep, daemon=True)
    canceller.start()
    code, output, _ = sweeper("submit", str(spec_file(tmp_path)), "--wait", "--server", server.url)
    canceller.join()

    assert code == 1, output
    assert "cancelled" in output and "cancelled on request" in output

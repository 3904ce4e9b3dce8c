"""Faults with real processes: the server killed and restarted mid-sweep, a cancel during a run, bad trials.

`sweeper serve` and `sweeper worker` run as subprocesses on a temporary SQLite file; everything is
observed through the REST API, as an operator would. (Worker crashes and SIGTERM draining with real
agent processes are in tests/workers/test_supervisor.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess

import httpx
import pytest
from e2e_processes import BIN, ServerApi, free_port, wait_until

pytestmark = pytest.mark.e2e


def spec(name: str, epochs: int, **hparams) -> dict:
    return {"name": name, "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
            "hparams": {"units": {"type": "discrete", "values": [8, 16, 24, 32, 40, 48]}, "batch_size": 128,
                        **hparams},
            "search": {"strategy": "grid"}, "train": {"epochs": epochs}}


class Service(ServerApi):
    """A server (restartable on its port and database) and one worker supervisor, as subprocesses."""

    def __init__(self, processes, tmp_path, lease_seconds: float = 20, heartbeat_seconds: float = 1):
        self.processes, self.tmp_path = processes, tmp_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server_args = ["serve", "--port", str(self.port), "--database-url", f"sqlite:///{tmp_path / 's.db'}",
                            "--logdir", str(tmp_path / "runs"), "--lease-seconds", str(lease_seconds),
                            "--heartbeat-seconds", str(heartbeat_seconds)]
        self.server = self.start_server("server")

    def start_server(self, name: str) -> subprocess.Popen:
        server = self.processes.start(name, str(BIN / "sweeper"), *self.server_args)
        wait_until(lambda: httpx.get(f"{self.url}/healthz").status_code == 200, 60, "the server")
        return server

    def start_worker(self, cpu_workers: int = 2) -> subprocess.Popen:
        return self.processes.start("worker", str(BIN / "sweeper"), "worker", "--server", self.url,
                                    "--gpus", "none", "--cpu-workers", str(cpu_workers))

    def wait_for(self, sweep_id: int, status: str, timeout: float = 300) -> dict:
        return wait_until(lambda: (s := self.get(f"/sweeps/{sweep_id}"))["status"] == status and s, timeout,
                          f"sweep {sweep_id} to be {status}", interval=1)

    def trials(self, sweep_id: int) -> list[dict]:
        return self.get(f"/sweeps/{sweep_id}/trials")["data"]


def test_the_server_killed_mid_sweep_and_restarted_loses_and_repeats_no_trial(processes, tmp_path):
    service = Service(processes, tmp_path)
    service.start_worker()
    sweep_id = service.submit(spec("restart", epochs=6))
    wait_until(lambda: any(t["state"] == "completed" for t in service.trials(sweep_id))
               and any(t["state"] == "running" for t in service.trials(sweep_id)), 120, "a sweep under way")

    service.server.send_signal(signal.SIGKILL)
    service.server.wait()
    service.start_server("server-restarted")
    sweep = service.wait_for(sweep_id, "completed")

    trials = service.trials(sweep_id)
    assert sweep["trial_counts"]["completed"] == 6, processes.logs()
    assert sorted(t["hparams"]["units"] for t in trials) == [8, 16, 24, 32, 40, 48]
    for trial in trials:
        history = service.get(f"/trials/{trial['id']}")["history"]
        assert trial["state"] == "completed"
        assert [h["epoch"] for h in history] == list(range(6)), (trial["id"], history)


def test_cancel_during_a_run_stops_the_running_trials_and_starts_no_more(processes, tmp_path):
    service = Service(processes, tmp_path)
    service.start_worker()
    sweep_id = service.submit(spec("cancel", epochs=400))
    wait_until(lambda: sum(t["state"] == "running" and service.get(f"/trials/{t['id']}")["history"] != []
                           for t in service.trials(sweep_id)) == 2, 120, "two trials training")

    result = subprocess.run([str(BIN / "sweeper"), "cancel", str(sweep_id), "--server", service.url],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr

    # Heartbeats every second; a trial stops at the next batch after the worker hears of it.
    trials = wait_until(lambda: (ts := service.trials(sweep_id)) and all(t["state"] == "cancelled" for t in ts)
                        and ts, 30, "every trial cancelled")
    sweep = service.get(f"/sweeps/{sweep_id}")
    assert sweep["status"] == "cancelled" and sweep["trial_counts"]["cancelled"] == len(trials)
    assert all(len(service.get(f"/trials/{t['id']}")["history"]) < 400 for t in trials)
    # The workers are still there, idle, ready for the next sweep.
    workers = service.get("/workers")["data"]
    assert len(workers) == 2 and all(w["state"] == "idle" for w in workers)


def test_a_nan_trial_and_a_failing_trial_fail_once_with_their_reason(processes, tmp_path):
    (tmp_path / "data").mkdir()  # the worker's data root (./data), holding no missing.npz
    service = Service(processes, tmp_path)
    service.start_worker()
    diverging = spec("nan", epochs=3, optimizer="sgd",
                     learning_rate={"type": "discrete", "values": [0.01, 1.0e30]})
    diverging["hparams"]["units"] = 16
    broken = {**spec("broken", epochs=1), "dataset": "npz:missing.npz"}
    nan_id, broken_id = service.submit(diverging), service.submit(broken)

    service.wait_for(nan_id, "completed")
    healthy, nan = sorted(service.trials(nan_id), key=lambda t: t["hparams"]["learning_rate"])
    assert healthy["state"] == "completed"
    assert (nan["state"], nan["failure_kind"], nan["attempts"]) == ("failed", "nan", 1)
    assert nan["error"].startswith("loss became NaN at epoch 0")

    # Every trial fails the same way: after max_failures (5) in a row the sweep fails and starts no more.
    sweep = service.wait_for(broken_id, "failed")
    # A trial the other worker was running when the fifth failure ended the sweep is cancelled at that
    # worker's next call, a moment later.
    trials = wait_until(lambda: (found := service.trials(broken_id))
                        and not any(t["state"] in ("pending", "running") for t in found) and found,
                        30, "the failed sweep's trials to end")
    failed = [t for t in trials if t["state"] == "failed"]
    assert len(failed) == 5 and all(t["state"] == "cancelled" for t in trials if t not in failed)
    assert all(t["failure_kind"] == "error" and t["attempts"] == 1 for t in failed)
    assert "does not exist under the data root" in failed[0]["error"]
    assert "Traceback (most recent call last)" in failed[0]["traceback"]
    assert "failed in a row" in sweep["reason"] or "consecutive" in sweep["reason"], sweep["reason"]


def tensorboards_reading(folder) -> list[int]:
    """Pids of the processes that serve `folder` (a sweep's) as TensorBoard's `--logdir`."""
    wanted = [b"--logdir", str(folder).encode()]
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().split(b"\0")
        except OSError:
            continue
        if any(command[index:index + 2] == wanted for index in range(len(command))):
            pids.append(int(entry))
    return pids


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc (Linux)")
def test_a_server_killed_outright_leaves_no_tensorboard_running(processes, tmp_path):
    service = Service(processes, tmp_path)
    sweep_id = service.submit(spec("board", epochs=1))
    opened = httpx.post(f"{service.url}/api/v1/sweeps/{sweep_id}/tensorboard", timeout=120)
    assert opened.status_code == 200, opened.text
    sweep_folder = tmp_path / "runs" / str(sweep_id)
    assert len(tensorboards_reading(sweep_folder)) == 1

    # No shutdown to run: SIGKILL gives the server no chance to stop its TensorBoards.
    service.server.send_signal(signal.SIGKILL)
    service.server.wait()

    wait_until(lambda: not tensorboards_reading(sweep_folder), 20, "the TensorBoard to end with its server")

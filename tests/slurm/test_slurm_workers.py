"""`sweeper slurm` against a real one-node Slurm cluster: a sweep run by a job array of CPU workers, and an
array task cancelled mid-trial whose trial another task finishes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from slurm_cluster import SlurmCluster
from slurm_testing import ADMIN_TOKEN, WORKER_TOKEN, Server, sweeper

pytestmark = [pytest.mark.e2e, pytest.mark.training]

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str, diagnose: Callable[[], str] = str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnose()}")


def write_spec(folder: Path, name: str, units: list[int], epochs: int, batch_size: int = 32) -> Path:
    spec = folder / f"{name}.yaml"
    spec.write_text(f"name: {name}\nmodel: mlp\ndataset: digits\nobjective: {{metric: val_accuracy}}\n"
                    f"hparams:\n  units: {{type: discrete, values: {units}}}\n  batch_size: {batch_size}\n"
                    f"search: {{strategy: grid}}\ntrain: {{epochs: {epochs}}}\n")
    return spec


def token_file(folder: Path) -> Path:
    path = folder / "worker-token"
    path.write_text(WORKER_TOKEN + "\n")
    path.chmod(0o600)
    return path


def submit_array(cluster: SlurmCluster, server: Server, folder: Path, tasks: int, idle_exit: int,
                 *options: str) -> str:
    submitted = sweeper(cluster, "slurm", "submit", "--server", server.url, "--tasks", str(tasks),
                        "--gpus-per-trial", "none", "--cpus-per-task", "1", "--idle-exit", str(idle_exit),
                        "--output", str(folder / "logs"), "--token-file", str(token_file(folder)), *options,
                        cwd=folder)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job = re.search(r"Submitted array job (\d+)", submitted.stdout)
    assert job, submitted.stdout
    return job[1]


def create_sweep(cluster: SlurmCluster, server: Server, spec: Path) -> int:
    created = sweeper(cluster, "submit", str(spec), "--server", server.url, cwd=spec.parent,
                      SWEEPER_TOKEN=ADMIN_TOKEN)
    assert created.returncode == 0, created.stdout + created.stderr
    return int(re.search(r"Created sweep (\d+)", created.stdout)[1])


def task_logs(folder: Path) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-4000:]}" for log in sorted((folder / "logs").glob("*.out")))


def test_a_job_array_of_cpu_workers_runs_a_sweep_to_completion_and_ends_when_idle(
        slurm_cluster: SlurmCluster, server: Server, tmp_path: Path) -> None:
    sweep_id = create_sweep(slurm_cluster, server, write_spec(tmp_path, "array", [4, 8, 16], epochs=2))
    job = submit_array(slurm_cluster, server, tmp_path, tasks=2, idle_exit=20)
    logs = lambda: task_logs(tmp_path) + f"\n--- server\n{server.log.read_text()[-2000:]}"  # noqa: E731

    sweep = wait_for(lambda: (s := server.sweep(sweep_id))["status"] != "running" and s, 300, "the sweep", logs)
    assert sweep["status"] == "completed", logs()
    trials = server.trials(sweep_id)
    assert [trial["state"] for trial in trials] == ["completed"] * 3
    # Each task's worker id names its array task; the token reached the workers from the file.
    assert {trial["worker_id"] for trial in trials} <= {f"slurm-{job}_0-cpu0", f"slurm-{job}_1-cpu0"}
    assert {worker["id"] for worker in server.workers()} == {f"slurm-{job}_0-cpu0", f"slurm-{job}_1-cpu0"}

    status = sweeper(slurm_cluster, "slurm", "status", job, "--server", server.url, cwd=tmp_path,
                     SWEEPER_TOKEN=ADMIN_TOKEN)
    assert status.returncode == 0, status.stderr
    assert f"{job}_0" in status.stdout and f"slurm-{job}_1-cpu0" in status.stdout, status.stdout

    # No trial left: each task's workers idle out and the array ends by itself, successfully.
    wait_for(lambda: not slurm_cluster.task_states(job), 120, "the array to end", logs)
    assert "exited normally" in task_logs(tmp_path)


def test_a_task_cancelled_mid_trial_hands_its_trial_back_and_another_task_finishes_it(
        slurm_cluster: SlurmCluster, server: Server, tmp_path: Path) -> None:
    # One trial, long enough to be cancelled in the middle: small batches over many epochs.
    sweep_id = create_sweep(slurm_cluster, server, write_spec(tmp_path, "handover", [16], epochs=40, batch_size=8))
    job = submit_array(slurm_cluster, server, tmp_path, tasks=2, idle_exit=240)
    logs = lambda: task_logs(tmp_path) + f"\n--- server\n{server.log.read_text()[-2000:]}"  # noqa: E731

    def trial_with_epochs() -> dict | None:
        trials = server.trials(sweep_id)  # a trial exists once a worker claims it
        trial = trials[0] if trials else {"state": "pending"}
        return trial if trial["state"] == "running" and len(server.admin.get(
            f"/trials/{trial['id']}").json().get("history") or []) >= 3 else None

    trial = wait_for(trial_with_epochs, 240, "the trial to run 3 epochs", logs)
    first = trial["worker_id"]
    first_task = first.removeprefix(f"slurm-{job}_").split("-")[0]
    # Both tasks are up (the other one waits for work), so the trial has somewhere to go.
    wait_for(lambda: len(slurm_cluster.task_states(job)) == 2 and len(server.workers()) == 2, 120,
             "both tasks' workers", logs)

    slurm_cluster.run("scancel", f"{job}_{first_task}")  # SIGTERM to the whole task, SIGKILL after KillWait

    ended = wait_for(lambda: (s := server.sweep(sweep_id))["status"] != "running" and s, 300, "the sweep", logs)
    assert ended["status"] == "completed", logs()
    finished = server.trials(sweep_id)[0]
    assert finished["state"] == "completed"
    assert finished["worker_id"] != first and finished["worker_id"].startswith(f"slurm-{job}_")
    assert finished["attempts"] == 1, "a hand-back counts no attempt"
    text = task_logs(tmp_path)
    # The cancelled worker finished its epoch and released the trial itself, rather than being killed.
    assert re.search(rf"releasing .*worker {re.escape(first)} shut down after \d+ epoch", text), text
    assert "killed by SIGTERM" not in text and "killed by SIGKILL" not in text, text
    # The other task resumed it from the checkpoint of the last finished epoch.
    assert re.search(r"resumes after epoch [1-9]", text), text

    cancelled = sweeper(slurm_cluster, "slurm", "cancel", job, cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    wait_for(lambda: not slurm_cluster.task_states(job), 120, "the array to end after `sweeper slurm cancel`", logs)


def test_tasks_reaching_their_time_limit_hand_the_trial_on_until_it_finishes(
        slurm_cluster: SlurmCluster, server: Server, tmp_path: Path) -> None:
    # One task at a time, each with a minute: SIGTERM comes 45 s before the end (at Slurm's next 30 s
    # tick), the worker finishes its epoch and hands the trial back, and the next task resumes it.
    # Some 2 minutes of training at half a second an epoch on an idle machine: more than one task's minute
    # whatever the load (40 epochs took 19 s on an idle machine, and finished in the first task).
    sweep_id = create_sweep(slurm_cluster, server, write_spec(tmp_path, "relay", [16], epochs=250, batch_size=8))
    job = submit_array(slurm_cluster, server, tmp_path, 8, 20, "--max-running", "1", "--time", "1",
                       "--signal-lead", "45")
    logs = lambda: task_logs(tmp_path) + f"\n--- server\n{server.log.read_text()[-2000:]}"  # noqa: E731

    ended = wait_for(lambda: (s := server.sweep(sweep_id))["status"] != "running" and s, 480, "the sweep", logs)
    assert ended["status"] == "completed", logs()
    text = task_logs(tmp_path)
    handed_back = re.findall(rf"worker (slurm-{job}_\d+-cpu0) shut down after \d+ epoch", text)
    assert handed_back, text
    assert re.search(r"resumes after epoch [1-9]", text), text
    # Slurm killed no worker: each left on the early SIGTERM (stepd logs it as "CANCELLED"), exiting 0.
    assert "killed by" not in text and "DUE TO TIME LIMIT" not in text, text
    assert text.count("exited normally") >= len(handed_back), text

    cancelled = sweeper(slurm_cluster, "slurm", "cancel", job, cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    wait_for(lambda: not slurm_cluster.task_states(job), 120, "the array to end", logs)


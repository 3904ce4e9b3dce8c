"""Workers on other hosts need only the server's URL and the worker token.

Each "host" here is a process tree with its own empty working folder, its own HOME and an environment
with nothing of the others' (no SWEEPER_* variable but the worker's token); the server listens on
another loopback address than the workers' own where the system has one (127.0.0.2 on Linux). The
logs go to a folder of the server's host (standing for one shared by every host) or to a GCS bucket
(an emulator reached by TensorFlow's own gs:// file system, see gcs_emulator), named by the server in
each assignment. TensorBoard, started by the server, then reads the sweep from there.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import pytest
import tensorflow as tf
from e2e_processes import BIN, free_port, wait_until
from gcs_emulator import gcs, unique_prefix  # noqa: F401 - the fixture

pytestmark = pytest.mark.e2e

ADMIN = "admin-hosts-0123456789abcdef"
WORKER = "worker-hosts-0123456789abcdef"
TRIALS = 4
SPEC = {"name": "two-hosts", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
        "hparams": {"units": {"type": "discrete", "values": [8, 16, 24, 32][:TRIALS]}, "batch_size": 64},
        "search": {"strategy": "grid"}, "train": {"epochs": 1, "validation_split": 0.2}}
ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def server_address() -> str:
    """A loopback address other than the workers' 127.0.0.1 where the system routes one (Linux routes all of
    127.0.0.0/8 to the loopback interface), else 127.0.0.1 itself."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.2", 0))
        except OSError:
            return "127.0.0.1"
    return "127.0.0.2"


def host_environment(home: Path, **variables: str) -> dict[str, str]:
    """A host's environment: a PATH, its own HOME, and only the given variables."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8", **variables}


@pytest.fixture(params=["shared folder", "GCS bucket"])
def logdir_and_credentials(request: pytest.FixtureRequest) -> tuple[str | None, dict[str, str]]:
    """The server's logdir (None: a folder on its own host) and what every host needs to reach it."""
    if request.param == "shared folder":
        return None, {}
    bucket = request.getfixturevalue("gcs")
    # The emulator's variables play the part of GOOGLE_APPLICATION_CREDENTIALS on real hosts.
    return bucket.url(unique_prefix(), "runs"), bucket.environment()


def test_workers_given_only_the_url_and_token_run_a_sweep_logged_where_the_server_says(
        tmp_path: Path, processes, logdir_and_credentials: tuple[str | None, dict[str, str]]) -> None:
    logdir, credentials = logdir_and_credentials
    head = tmp_path / "head"
    head.mkdir()
    address, port = server_address(), free_port()
    url = f"http://{address}:{port}"
    # A relative folder on the head: the server makes it absolute for the workers, which run elsewhere.
    processes.start("server", str(BIN / "sweeper"), "serve", "--host", address, "--port", str(port),
                    "--database-url", "sqlite:///sweeper.db", "--logdir", logdir or "runs", cwd=head,
                    env=host_environment(head, SWEEPER_ADMIN_TOKEN=ADMIN, SWEEPER_WORKER_TOKEN=WORKER, **credentials))
    wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 60, "the server")
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)

    hosts = [tmp_path / "gpu-host-1", tmp_path / "gpu-host-2"]
    for host in hosts:
        host.mkdir()
        processes.start(f"worker-{host.name}", str(BIN / "sweeper"), "worker", "--server", url, cwd=host,
                        env=host_environment(host, SWEEPER_TOKEN=WORKER, **credentials))
    # Both ask for work before there is any, so both get a trial of the sweep.
    wait_until(lambda: admin.get("/api/v1/workers").json()["count"] == 2, 60, "both workers to ask for work")

    created = admin.post("/api/v1/sweeps", json=SPEC)
    assert created.status_code == 201, created.text
    sweep_id = created.json()["id"]
    sweep = wait_until(lambda: (s := admin.get(f"/api/v1/sweeps/{sweep_id}").json())["status"] != "running" and s,
                       120, "the sweep to finish", interval=1)

    assert sweep["status"] == "completed", processes.logs()
    trials = admin.get(f"/api/v1/sweeps/{sweep_id}/trials").json()["data"]
    assert len(trials) == TRIALS and all(trial["state"] == "completed" for trial in trials)
    workers = {worker["id"] for worker in admin.get("/api/v1/workers").json()["data"]}
    assert {trial["worker_id"] for trial in trials} == workers and len(workers) == 2

    # Every trial's logs are in the server's logdir, and nothing in the workers' own folders.
    sweep_folder = f"{logdir}/{sweep_id}" if logdir else str(head / "runs" / str(sweep_id))
    for trial in trials:
        run = f"trial-{trial['number']:04d}"  # each trial's folder, named by its number within the sweep
        assert tf.io.gfile.glob(f"{sweep_folder}/{run}/train/*tfevents*"), trial
        # Completed: its worker deletes its checkpoint once the answer comes (the last one, as the sweep ends).
        wait_until(lambda: not tf.io.gfile.exists(f"{sweep_folder}/{run}/checkpoint"), 30,
                   f"{run}'s checkpoint deleted")
    for host in hosts:
        assert not (host / "runs").exists()

    # The server's TensorBoard reads the sweep from there: every trial, with its objective, a success.
    body = {"experimentName": "", "allowedStatuses": ALL_STATUSES, "startIndex": 0, "sliceSize": 100}

    def session_groups():
        answer = admin.post(f"/tensorboard/{sweep_id}/data/plugin/hparams/session_groups", json=body)
        groups = answer.json().get("sessionGroups", []) if answer.status_code == 200 else []
        return groups if len(groups) == TRIALS and all(group.get("metricValues") for group in groups) else None

    groups = wait_until(session_groups, 90, "TensorBoard's session groups", interval=1)
    assert {group["name"] for group in groups} == {f"trial-{trial['number']:04d}" for trial in trials}
    assert all(session["status"] == "STATUS_SUCCESS" for group in groups for session in group["sessions"])
    admin.close()

"""Fixtures for the Slurm tests: a one-node cluster for the whole session, and a `sweeper serve` with tokens."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from slurm_cluster import SlurmCluster, SlurmUnavailable, free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "admin-slurm-0123456789abcdef"
WORKER_TOKEN = "worker-slurm-0123456789abcdef"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    try:
        cluster = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as error:
        pytest.skip(f"no Slurm cluster: {error}")
    try:
        yield cluster
    finally:
        cluster.stop()


def sweeper_env(cluster: SlurmCluster, **extra: str) -> dict[str, str]:
    """The environment of a `sweeper` command run against the test cluster: this tree's code, no SWEEPER_ settings."""
    env = {name: value for name, value in cluster.env.items() if not name.startswith("SWEEPER_")}
    path = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env | {"PYTHONPATH": path, "COLUMNS": "200", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"} | extra


def sweeper(cluster: SlurmCluster, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=sweeper_env(cluster, **env), timeout=120)


class Server:
    """A `sweeper serve` with an admin and a worker token, on a free loopback port."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path):
        self.url = url
        self.process = process
        self.log = log
        self.admin = httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                  timeout=10)

    def sweep(self, sweep_id: int) -> dict:
        return self.admin.get(f"/sweeps/{sweep_id}").json()

    def trials(self, sweep_id: int) -> list[dict]:
        return self.admin.get(f"/sweeps/{sweep_id}/trials").json()["data"]

    def workers(self) -> list[dict]:
        return self.admin.get("/workers").json()["data"]


@pytest.fixture
def server(slurm_cluster: SlurmCluster, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    log = tmp_path / "server.log"
    env = sweeper_env(slurm_cluster, SWEEPER_ADMIN_TOKEN=ADMIN_TOKEN, SWEEPER_WORKER_TOKEN=WORKER_TOKEN)
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port), "--database-url",
                                    f"sqlite:///{tmp_path / 'sweeper.db'}", "--logdir", str(tmp_path / "runs")],
                                   stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    running = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{running.url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and process.poll() is None, f"no server: {log.read_text()[-2000:]}"
        time.sleep(0.5)
    yield running
    running.admin.close()
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

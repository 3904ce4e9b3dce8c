"""Fixtures for the Slurm tests: a one-node cluster for the whole session, and a `sweeper serve` with tokens."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from slurm_cluster import SlurmCluster, SlurmUnavailable, free_port
from slurm_testing import ADMIN_TOKEN, WORKER_TOKEN, Server, sweeper_env


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

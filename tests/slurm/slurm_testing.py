"""What the Slurm tests share: the tokens, `sweeper` commands run against the test cluster, and the server's view."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
from slurm_cluster import SlurmCluster

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "admin-slurm-0123456789abcdef"
WORKER_TOKEN = "worker-slurm-0123456789abcdef"


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

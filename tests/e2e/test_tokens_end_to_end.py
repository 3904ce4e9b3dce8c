"""Tokens with real processes: `sweeper serve` with an admin and a worker token, `sweeper worker --token`
finishing a sweep, clients refused without the token, and `serve` refusing to bind beyond loopback
without one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from e2e_processes import BIN, free_port, wait_until

pytestmark = pytest.mark.e2e

ADMIN = "admin-e2e-0123456789abcdef"
WORKER = "worker-e2e-0123456789abcdef"
SPEC = ("name: guarded\nmodel: mlp\ndataset: digits\nobjective: {metric: val_accuracy}\n"
        "hparams:\n  units: {type: discrete, values: [8, 16]}\nsearch: {strategy: grid}\ntrain: {epochs: 1}\n")


def sweeper_cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """A `sweeper` command with SWEEPER_TOKEN set to `token`, or unset."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SWEEPER_")}
    env |= {"COLUMNS": "200", "TF_CPP_MIN_LOG_LEVEL": "2"} | ({"SWEEPER_TOKEN": token} if token else {})
    return subprocess.run([str(BIN / "sweeper"), *args], capture_output=True, text=True, env=env, timeout=120)


def one_line(text: str) -> str:
    return " ".join(text.split())  # rich wraps long messages


def agent_processes(server_url: str) -> dict[int, tuple[list[str], dict[str, str]]]:
    """Each running worker agent of `server_url`, by pid: its command line and environment, as `ps` reads them."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if "workers.agent" not in argv or server_url not in argv:
                continue
            environ = (proc / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # ended meanwhile, or not ours
        found[int(proc.name)] = (argv, dict(item.partition("=")[::2] for item in environ if item))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the worker processes through /proc")
def test_a_worker_token_runs_a_sweep_and_clients_without_the_admin_token_are_refused(tmp_path: Path,
                                                                                      processes) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes.start("server", "env", f"SWEEPER_ADMIN_TOKEN={ADMIN}", f"SWEEPER_WORKER_TOKEN={WORKER}",
                    str(BIN / "sweeper"), "serve", "--port", str(port),
                    "--database-url", f"sqlite:///{tmp_path / 'sweeper.db'}", "--logdir", str(tmp_path / "runs"))
    wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 60, "the server")
    assert httpx.get(f"{url}/api/v1/sweeps").status_code == 401
    spec = tmp_path / "guarded.yaml"
    spec.write_text(SPEC)

    refused = sweeper_cli("submit", str(spec), "--server", url)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "this server needs a token" in one_line(refused.stderr)
    assert "pass a token of this server with --token or set SWEEPER_TOKEN" in one_line(refused.stderr)
    with_worker_token = sweeper_cli("submit", str(spec), "--server", url, "--token", WORKER)
    assert with_worker_token.returncode == 2
    assert "pass the admin token with --token or set SWEEPER_TOKEN" in one_line(with_worker_token.stderr)
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"})
    assert admin.get("/api/v1/sweeps").json()["count"] == 0  # nothing was created by the refused ones

    submitted = sweeper_cli("submit", str(spec), "--server", url, token=ADMIN)
    assert submitted.returncode == 0, submitted.stderr
    processes.start("worker", str(BIN / "sweeper"), "worker", "--server", url, "--gpus", "none", "--token", WORKER)
    sweep = wait_until(lambda: (s := admin.get("/api/v1/sweeps/1").json())["status"] != "running" and s,
                       240, "the sweep to finish", interval=2)
    assert sweep["status"] == "completed" and sweep["trial_counts"]["completed"] == 2, processes.logs()

    # The supervisor hands the token to its children in their environment, never on their command line.
    agents = wait_until(lambda: agent_processes(url), 30, "the worker agents")
    for argv, environ in agents.values():
        assert not any(WORKER in arg for arg in argv), argv
        assert environ.get("SWEEPER_TOKEN") == WORKER
    status = sweeper_cli("status", "1", "--server", url, token=ADMIN)
    assert status.returncode == 0 and status.stdout.count("completed") >= 2, status.stderr
    admin.close()


def test_a_worker_with_a_wrong_token_stops_at_once_saying_why(tmp_path: Path, processes) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes.start("server", str(BIN / "sweeper"), "serve", "--port", str(port), "--admin-token", ADMIN,
                    "--database-url", f"sqlite:///{tmp_path / 'sweeper.db'}", "--logdir", str(tmp_path / "runs"))
    wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 60, "the server")

    result = sweeper_cli("worker", "--server", url, "--gpus", "none", token="not-this-servers-token")

    assert result.returncode == 2, result.stdout + result.stderr
    assert "invalid token" in one_line(result.stderr) and "SWEEPER_TOKEN" in one_line(result.stderr)


def test_serve_on_a_non_loopback_address_without_a_token_exits_2_with_the_reason(tmp_path: Path) -> None:
    database = tmp_path / "sweeper.db"

    result = sweeper_cli("serve", "--host", "0.0.0.0", "--port", str(free_port()),
                         "--database-url", f"sqlite:///{database}", "--logdir", str(tmp_path / "runs"))

    assert result.returncode == 2, result.stdout + result.stderr
    message = one_line(result.stderr)
    assert "host '0.0.0.0' is not a loopback address, and no admin_token is set" in message
    assert "--admin-token or SWEEPER_ADMIN_TOKEN" in message and "or bind 127.0.0.1" in message
    assert not database.exists()  # refused before anything was created


def test_serve_refuses_a_short_token_naming_the_rule(tmp_path: Path) -> None:
    result = sweeper_cli("serve", "--host", "0.0.0.0", "--admin-token", "too-short", "--port", str(free_port()),
                         "--database-url", f"sqlite:///{tmp_path / 'sweeper.db'}")

    assert result.returncode == 2
    assert "admin_token: must be at least 16 characters, but got 9" in one_line(result.stderr)
    assert "too-short" not in result.stderr


def test_serve_on_every_interface_with_a_token_serves_and_guards(tmp_path: Path, processes) -> None:
    port = free_port()
    processes.start("server", "env", f"SWEEPER_ADMIN_TOKEN={ADMIN}", str(BIN / "sweeper"), "serve",
                    "--host", "0.0.0.0", "--port", str(port),
                    "--database-url", f"sqlite:///{tmp_path / 'sweeper.db'}", "--logdir", str(tmp_path / "runs"))
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 60, "the server")

    assert httpx.get(f"{url}/api/v1/sweeps").status_code == 401
    assert httpx.get(f"{url}/api/v1/sweeps", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200

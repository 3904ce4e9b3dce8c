"""Real processes for end-to-end tests: the `sweeper` CLI and TensorBoard, on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, KeyError, ValueError) as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error})")


class ServerApi:
    """Reads and sweeps of a server under test, over its REST API (`url` set by the subclass)."""

    url: str

    def get(self, path: str) -> dict:
        return httpx.get(f"{self.url}/api/v1{path}", timeout=10).json()

    def submit(self, body: dict) -> int:
        """Create a sweep; its id."""
        created = httpx.post(f"{self.url}/api/v1/sweeps", json=body, timeout=10)
        assert created.status_code == 201, created.text
        return created.json()["id"]


class Processes:
    """Starts processes with their output in files, and ends them all at teardown."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, name: str, *command: str, env: dict[str, str] | None = None,
              cwd: Path | None = None, own_group: bool = False) -> subprocess.Popen:
        """Start `command` in this test's folder with this environment, or in `cwd` with `env` alone;
        `own_group` starts it in a process group of its own, as a shell starts a job."""
        log = self.folder / f"{name}.log"
        env = {**(os.environ if env is None else env), "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                                   cwd=cwd or self.folder, process_group=0 if own_group else None)
        self.started.append((process, log))
        return process

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for _, log in self.started)

    def stop_all(self) -> None:
        for process, _ in reversed(self.started):
            if process.poll() is None:
                process.terminate()
        for process, _ in self.started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def pids_with(*arguments: str) -> list[int]:
    """Pids of the live processes whose command line holds each of `arguments` (Linux: reads /proc)."""
    wanted = [argument.encode() for argument in arguments]
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().split(b"\0")
        except OSError:
            continue
        if all(argument in command for argument in wanted) and alive(int(entry)):
            pids.append(int(entry))
    return pids


def alive(pid: int) -> bool:
    """Whether `pid` still runs: a zombie (ended, not yet reaped by its new parent) does not."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

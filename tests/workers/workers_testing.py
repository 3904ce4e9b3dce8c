"""Helpers for the worker tests: specs, free ports and a fake worker program for the supervisor.

Plain functions here (not in conftest.py, whose module name clashes with other test folders').
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.supervisor import _caught_signals


def free_port() -> int:
    """A port nobody listens on right now (the OS's pick, released again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` now, as the supervisor reads it from /proc."""
    return bool(_caught_signals(pid) & (1 << (signum - 1)))


def runs(tmp_path: Path, worker_id: str) -> list[dict[str, Any]]:
    """What the fake child (FAKE_CHILD) recorded of each of its runs as `worker_id`, oldest first."""
    log = tmp_path / "children" / f"{worker_id}.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def digits_spec(name: str = "digits", trials: int = 2, epochs: int = 2, **overrides: Any) -> dict[str, Any]:
    """A small grid sweep on the built-in digits data: `trials` trials of `epochs` epochs."""
    spec: dict[str, Any] = {
        "name": name,
        "model": "mlp",
        "dataset": "digits",
        "objective": {"metric": "val_accuracy", "goal": "maximize"},
        "hparams": {"units": {"type": "discrete", "values": [8 * (k + 1) for k in range(trials)]},
                    "batch_size": 64},
        "search": {"strategy": "grid"},
        "train": {"epochs": epochs},
    }
    spec.update(overrides)
    return spec


# A stand-in for `python -m workers.agent`: records its environment and arguments, one JSON line per
# run, in $FAKE_CHILD_OUT/<worker id>.jsonl, then behaves as $FAKE_CHILD_MODE says.
FAKE_CHILD = r'''
import fcntl, json, os, signal, sys, time
from pathlib import Path

args = sys.argv[1:]
worker_id = args[args.index("--worker-id") + 1]
log = Path(os.environ["FAKE_CHILD_OUT"]) / f"{worker_id}.jsonl"
runs_before = len(log.read_text().splitlines()) if log.exists() else 0

def holds_lock():
    # The inherited lock file: locking it again through the same open file succeeds, and it is the id's.
    fd = int(args[args.index("--worker-id-lock-fd") + 1])
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return os.path.samestat(os.fstat(fd), os.stat(Path(os.environ["SWEEPER_LOCK_DIR"]) / f"{worker_id}.lock"))

record = {"argv": args, "pid": os.getpid(), "run": runs_before + 1, "holds_lock": holds_lock(),
          **{name: os.environ.get(name) for name in
             ("CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH", "CUDA_DEVICE_ORDER", "SWEEPER_GPU_MEMORY_MB",
              "SWEEPER_CPU_DEVICES")}}
with log.open("a") as f:
    f.write(json.dumps(record) + "\n")
mode = os.environ.get("FAKE_CHILD_MODE", "exit0")
first = runs_before == 0

def note(event):
    with (log.parent / f"{worker_id}.events").open("a") as f:
        f.write(event + "\n")

if mode == "exit3_once" and first:
    sys.exit(3)
if mode == "exit75_twice" and runs_before < 2:
    sys.exit(75)
if mode == "exit3_always":
    sys.exit(3)
if mode == "exit78_always":
    sys.exit(78)
if mode == "sigkill_once" and first:
    os.kill(os.getpid(), signal.SIGKILL)
def hold_trial():
    # What the agent writes while it runs a trial: the supervisor reads it when the process dies.
    state = Path(args[args.index("--state-file") + 1])
    state.write_text(json.dumps({"trial_id": int(os.environ["FAKE_TRIAL_ID"]), "worker_id": worker_id,
                                 "lease_token": int(os.environ.get("FAKE_LEASE_TOKEN", "1")),
                                 "checkpoint_dir": os.environ.get("FAKE_CHECKPOINT_DIR", "")}))

if mode == "hold_trial_exit3_once" and first:
    hold_trial()
    sys.exit(3)
if mode == "hold_trial_sigkill_once" and first:
    hold_trial()
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "hold_trial_until_killed":
    hold_trial()
    signal.signal(signal.SIGTERM, lambda signum, frame: note("SIGTERM ignored"))
    note("ready")
    for _ in range(300):
        time.sleep(0.1)
    sys.exit(5)
if mode == "wait_for_sigterm":
    signal.signal(signal.SIGTERM, lambda signum, frame: (note("SIGTERM"), sys.exit(0)))
    note("ready")
    time.sleep(30)
    sys.exit(5)
if mode == "drain_like_the_agent":
    # The agent's shutdown: the first SIGTERM finishes the epoch (a second), the next one kills at once.
    def drain(signum, frame):
        note("SIGTERM")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(1.0)
        note("done")
        sys.exit(0)
    signal.signal(signal.SIGTERM, drain)
    note("ready")
    time.sleep(30)
    sys.exit(5)
if mode == "outlive_the_supervisor":
    # Lives on after its supervisor is killed, holding the worker id, until the test kills it.
    note("ready")
    time.sleep(120)
    sys.exit(5)
if mode == "ignore_sigterm":
    signal.signal(signal.SIGTERM, lambda signum, frame: note("SIGTERM ignored"))
    note("ready")
    for _ in range(300):
        time.sleep(0.1)
    sys.exit(5)
sys.exit(0)
'''

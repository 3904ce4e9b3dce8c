"""The supervisor: one pinned child per GPU, restarts of crashed children, signal forwarding.

Most tests run a fake child program that records what it was started with (see workers_testing).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sweeper.client import Client
from sweeper.messages import ClaimRequest
from workers.identity import reserve
from workers.supervisor import ChildExit, Supervisor
from workers_testing import FAKE_CHILD, digits_spec

NOWHERE = "http://127.0.0.1:9"  # the fake children never connect


@pytest.fixture
def fake_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    script = tmp_path / "fake_child.py"
    script.write_text(FAKE_CHILD)
    out = tmp_path / "children"
    out.mkdir()
    monkeypatch.setenv("FAKE_CHILD_OUT", str(out))
    return [sys.executable, str(script)]


def runs(tmp_path: Path, worker_id: str) -> list[dict[str, Any]]:
    log = tmp_path / "children" / f"{worker_id}.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def events(tmp_path: Path, worker_id: str) -> list[str]:
    path = tmp_path / "children" / f"{worker_id}.events"
    return path.read_text().splitlines() if path.exists() else []


def option(run: dict[str, Any], name: str) -> str | None:
    argv = run["argv"]
    return argv[argv.index(name) + 1] if name in argv else None


def wait_until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_each_gpu_child_is_pinned_to_exactly_one_gpu(tmp_path: Path, fake_child: list[str]) -> None:
    supervisor = Supervisor(NOWHERE, ["0", "2"], host="box", child_command=fake_child)
    supervisor.start()

    assert supervisor.wait() == 0
    assert supervisor.worker_ids == ["box-gpu0", "box-gpu2"]
    for gpu in ("0", "2"):
        [run] = runs(tmp_path, f"box-gpu{gpu}")
        assert run["CUDA_VISIBLE_DEVICES"] == gpu
        assert run["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
        assert run["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert option(run, "--worker-id") == f"box-gpu{gpu}"
        assert option(run, "--gpu") == gpu
        assert option(run, "--server") == NOWHERE
        assert option(run, "--host") == "box"
        assert option(run, "--idle-exit") is None
    assert supervisor.exits == []


def test_without_gpus_cpu_workers_run_with_gpus_hidden(tmp_path: Path, fake_child: list[str]) -> None:
    supervisor = Supervisor(NOWHERE, [], cpu_workers=2, host="box", idle_exit=2.5, child_command=fake_child)
    supervisor.start()

    assert supervisor.wait() == 0
    assert supervisor.worker_ids == ["box-cpu0", "box-cpu1"]
    for worker_id in supervisor.worker_ids:
        [run] = runs(tmp_path, worker_id)
        assert run["CUDA_VISIBLE_DEVICES"] == "-1"
        assert option(run, "--gpu") is None
        assert option(run, "--idle-exit") == "2.5"


def test_a_child_exiting_abnormally_is_recorded_and_restarted_on_the_same_gpu(
        tmp_path: Path, fake_child: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CHILD_MODE", "exit3_once")
    supervisor = Supervisor(NOWHERE, ["1"], host="box", child_command=fake_child, restart_backoff=0.05)
    supervisor.start()

    assert supervisor.wait() == 0
    first, second = runs(tmp_path, "box-gpu1")
    assert first["CUDA_VISIBLE_DEVICES"] == second["CUDA_VISIBLE_DEVICES"] == "1"
    assert first["pid"] != second["pid"]
    assert supervisor.exits == [ChildExit(worker_id="box-gpu1", gpu="1", returncode=3, trial_id=None)]
    assert supervisor.exits[0].describe() == "exited with code 3"


def test_a_child_killed_by_a_signal_is_recorded_with_the_signal_name(
        tmp_path: Path, fake_child: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CHILD_MODE", "sigkill_once")
    supervisor = Supervisor(NOWHERE, [], host="box", child_command=fake_child, restart_backoff=0.05)
    supervisor.start()

    assert supervisor.wait() == 0
    [death] = supervisor.exits
    assert death.returncode == -signal.SIGKILL
    assert death.signal_name == "SIGKILL"
    assert death.describe() == "killed by SIGKILL"
    assert len(runs(tmp_path, "box-cpu0")) == 2


def test_a_crash_looping_child_is_given_up_after_bounded_restarts(
        tmp_path: Path, fake_child: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CHILD_MODE", "exit3_always")
    supervisor = Supervisor(NOWHERE, ["0"], host="box", child_command=fake_child, max_restarts=2,
                            restart_backoff=0.05)
    supervisor.start()

    assert supervisor.wait() == 1
    assert len(runs(tmp_path, "box-gpu0")) == 3
    assert [death.returncode for death in supervisor.exits] == [3, 3, 3]


def test_a_child_that_cannot_reach_the_server_is_restarted_without_counting_as_a_crash(
        tmp_path: Path, fake_child: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CHILD_MODE", "exit75_twice")
    supervisor = Supervisor(NOWHERE, ["0"], host="box", child_command=fake_child, max_restarts=0, max_backoff=0.05)
    supervisor.start()

    assert supervisor.wait() == 0
    assert len(runs(tmp_path, "box-gpu0")) == 3
    assert [death.returncode for death in supervisor.exits] == [75, 75]


def test_stop_asks_children_to_finish_with_sigterm(tmp_path: Path, fake_child: list[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CHILD_MODE", "wait_for_sigterm")
    supervisor = Supervisor(NOWHERE, ["0", "1"], host="box", child_command=fake_child)
    supervisor.start()
    wait_until(lambda: all(events(tmp_path, w) == ["ready"] for w in supervisor.worker_ids))

    supervisor.stop(timeout=10)

    assert supervisor.wait() == 0
    assert all(events(tmp_path, w) == ["ready", "SIGTERM"] for w in supervisor.worker_ids)
    assert supervisor.exits == []


def test_stop_kills_a_child_that_ignores_sigterm_after_the_timeout(tmp_path: Path, fake_child: list[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CHILD_MODE", "ignore_sigterm")
    supervisor = Supervisor(NOWHERE, [], host="box", child_command=fake_child)
    supervisor.start()
    wait_until(lambda: events(tmp_path, "box-cpu0") == ["ready"])

    started = time.monotonic()
    supervisor.stop(timeout=0.5)

    assert time.monotonic() - started < 5
    assert supervisor.wait() == 0  # stopping was asked for: not a failure
    assert events(tmp_path, "box-cpu0") == ["ready", "SIGTERM ignored"]
    assert [death.signal_name for death in supervisor.exits] == ["SIGKILL"]
    assert len(runs(tmp_path, "box-cpu0")) == 1  # not restarted


def test_sigterm_to_the_supervisor_is_forwarded_to_every_child(tmp_path: Path, fake_child: list[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CHILD_MODE", "wait_for_sigterm")
    program = ("import sys\n"
               "from workers.supervisor import Supervisor\n"
               f"supervisor = Supervisor({NOWHERE!r}, ['0', '1'], host='box', child_command={fake_child!r})\n"
               "supervisor.install_signal_handlers()\n"
               "supervisor.start()\n"
               "sys.exit(supervisor.wait())\n")
    process = subprocess.Popen([sys.executable, "-c", program])
    try:
        wait_until(lambda: all(events(tmp_path, f"box-gpu{gpu}") == ["ready"] for gpu in "01"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
    assert events(tmp_path, "box-gpu0") == events(tmp_path, "box-gpu1") == ["ready", "SIGTERM"]


def test_a_dead_child_fails_the_trial_it_held_with_its_exit_code(
        tmp_path: Path, fake_child: list[str], monkeypatch: pytest.MonkeyPatch, client: Client, server: Any) -> None:
    sweep = client.create_sweep(digits_spec(trials=2))
    assignment = client.claim(ClaimRequest(worker_id="box-cpu0", host="box"))
    assert assignment is not None
    monkeypatch.setenv("FAKE_CHILD_MODE", "hold_trial_exit3_once")
    monkeypatch.setenv("FAKE_TRIAL_ID", str(assignment.trial_id))
    supervisor = Supervisor(server.url, [], host="box", child_command=fake_child, restart_backoff=0.05)
    supervisor.start()

    assert supervisor.wait() == 0
    assert supervisor.exits == [ChildExit("box-cpu0", None, 3, trial_id=assignment.trial_id)]
    trial = client.get_trial(assignment.trial_id)
    assert trial["state"] == "failed"
    assert "box-cpu0" in trial["error"] and "exited with code 3" in trial["error"]
    assert client.get_sweep(sweep["id"])["trial_counts"]["failed"] == 1


def test_real_agents_start_and_exit_when_idle(server: Any) -> None:
    # The supervisor's command line against the real agent's: every option it passes must parse.
    supervisor = Supervisor(server.url, [], cpu_workers=2, host="box", idle_exit=0.5)
    supervisor.start()

    assert supervisor.wait() == 0
    assert supervisor.exits == []


def test_two_supervisors_on_one_host_never_share_a_worker_id(fake_child: list[str]) -> None:
    first = Supervisor(NOWHERE, ["0"], cpu_workers=1, host="box", child_command=fake_child)
    second = Supervisor(NOWHERE, ["0"], cpu_workers=1, host="box", child_command=fake_child)
    assert first.worker_ids == ["box-gpu0"]
    assert second.worker_ids == ["box-gpu0-2"]
    first.stop(timeout=1)
    second.stop(timeout=1)


def test_a_restarted_supervisor_gets_the_same_worker_ids_back(fake_child: list[str]) -> None:
    first = Supervisor(NOWHERE, [], cpu_workers=2, host="box", child_command=fake_child)
    assert first.worker_ids == ["box-cpu0", "box-cpu1"]
    first.stop(timeout=1)
    again = Supervisor(NOWHERE, [], cpu_workers=2, host="box", child_command=fake_child)
    assert again.worker_ids == ["box-cpu0", "box-cpu1"]
    again.stop(timeout=1)


def test_a_worker_id_reservation_ends_with_the_process_that_held_it(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; from workers.identity import reserve; "
                               "r = reserve('box-cpu0'); print(r.worker_id, flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "box-cpu0"
    taken = reserve("box-cpu0")
    assert taken.worker_id == "box-cpu0-2"
    taken.release()
    holder.kill()
    holder.wait()
    assert reserve("box-cpu0").worker_id == "box-cpu0"

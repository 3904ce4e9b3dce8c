"""Worker id reservations: one live process tree per id on a host, the lock handed from supervisor to child."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.identity import WorkerIdInUseError, adopt, reserve, reserve_exactly


def test_a_reservation_taken_elsewhere_is_refused_naming_the_id_and_its_lock_file() -> None:
    held = reserve("box-cpu0")
    try:
        with pytest.raises(WorkerIdInUseError) as refused:
            reserve_exactly("box-cpu0")
    finally:
        held.release()

    assert f"worker id 'box-cpu0' is in use: another process on this host holds its lock file {held.path}" \
        in str(refused.value)
    reserve_exactly("box-cpu0").release()  # free again once released


def test_a_refused_reservation_leaves_the_holders_pid_in_the_lock_file() -> None:
    held = reserve("box-cpu0")
    with pytest.raises(WorkerIdInUseError):
        reserve_exactly("box-cpu0")

    assert held.path.read_text() == f"{os.getpid()}\n"
    held.release()


def test_a_child_given_the_open_lock_file_holds_the_id_until_it_exits(tmp_path: Path) -> None:
    held = reserve("box-cpu0")
    go = tmp_path / "go"
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from workers.identity import adopt; "
         f"adopt('box-cpu0', {held.fileno()}); print('held', flush=True); "
         f"[time.sleep(0.05) for _ in iter(lambda: Path({str(go)!r}).exists(), True)]"],
        pass_fds=[held.fileno()], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        held.release()  # the supervisor's hold ends (as when it dies): the child's remains
        with pytest.raises(WorkerIdInUseError):
            reserve_exactly("box-cpu0")
    finally:
        go.touch()
        child.wait(timeout=30)
    reserve_exactly("box-cpu0").release()


def test_a_file_descriptor_that_is_not_the_ids_lock_is_refused(tmp_path: Path) -> None:
    other = reserve("box-cpu1")
    reserve("box-cpu0").release()
    try:
        with pytest.raises(ValueError, match="is not the lock file .*box-cpu0.lock of worker id 'box-cpu0'"):
            adopt("box-cpu0", other.fileno())
    finally:
        other.release()


def test_a_lock_file_opened_anew_while_another_process_holds_the_lock_is_refused(tmp_path: Path) -> None:
    held = reserve("box-cpu0")
    try:
        with open(held.path) as opened_anew, pytest.raises(WorkerIdInUseError, match="another process holds"):
            adopt("box-cpu0", opened_anew.fileno())
    finally:
        held.release()

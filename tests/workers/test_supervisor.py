"""The supervisor: pinned children per GPU, restarts of crashed children and what becomes of their
trials, signal forwarding.

Most tests run a fake child program that records what it was started with (see workers_testing).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sweeper.client import Client
from sweeper.messages import ClaimRequest
from sweeper.training.checkpoints import TrialCheckpoint
from workers.gpus import Gpu, GpuSelectionError, discover_gpus
from workers.handoff import EXIT_WORKER_ID_IN_USE
from workers.identity import reserve
from workers.supervisor import ChildExit, Supervisor
from workers_testing import digits_spec, runs, wait_until

pytestmark = pytest.mark.training
NOWHERE = "http://127.0.0.1:9"  # the fake children never connect


def supervisor_process(fake_child: list[str], gpus: list[str], handles_signals: bool = False) -> subprocess.Popen[bytes]:
    """A supervisor of fake children in a process of its own (host "box"), so that it can be signalled or killed."""
    program = ("import sys\n"
               "from workers.supervisor import Supervisor\n"
               f"supervisor = Supervisor({NOWHERE!r}, {gpus!r}, host='box', child_command={fake_child!r})\n"
               + ("supervisor.install_signal_handlers()\n" if handles_signals else "")
               + "supervisor.start()\n"
               "sys.exit(supervisor.wait())\n")
    return subprocess.Popen([sys.executable, "-c", program])


def events(tmp_path: Path, worker_id: str) -> list[str]:
    path = tmp_path / "children" / f"{worker_id}.events"
    return path.read_text().splitlines() if path.exists() else []


def option(run: dict[str, Any], name: str) -> str | None:
    argv = run["argv"]
    return argv[argv.index(name) + 1] if name in argv else None


def test_each_gpu_child_is_pinned_to_exactly_one_gpu(tmp_path: Path, fake_child: list[str]) -> None:
    supervisor = Supervisor(NOWHERE, ["0", "2"], host="box", child_command=fake_child)
    supervisor.start()

    assert supervisor.wait() == 0
    assert supervisor.worker_ids == ["box-gpu0", "box-gpu2"]
    for gpu in ("0", "2"):
        [run] = runs(tmp_path, f"box-gpu{gpu}")
        assert run["CUDA_VISIBLE_DEVICES"] == gpu
        assert run["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
        assert run["SWEEPER_GPU_MEMORY_MB"] is None  # alone on its GPU: it grows instead
        assert run["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert option(run, "--worker-id") == f"box-gpu{gpu}"
        assert option(run, "--gpu") == gpu
        assert option(run, "--server") == NOWHERE
        assert option(run, "--host") == "box"
        assert option(run, "--idle-exit") is None
        assert option(run, "--supervisor-pid") == str(os.getpid())
        assert run["holds_lock"]  # the child holds its worker id's reservation too
    assert supervisor.exits == []


def test_trials_per_gpu_packs_children_on_each_gpu_with_a_share_of_its_memory(
        tmp_path: Path, fake_child: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Two GPUs as nvidia-smi lists them (NVML left out): 80 GB and 16 GB.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text('#!/bin/sh\nprintf "0, 81559, NVIDIA H100\\n1, 16384, Tesla T4\\n"\n')
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    gpus = discover_gpus(nvml=None)

    supervisor = Supervisor(NOWHERE, gpus, host="box", child_command=fake_child, trials_per_gpu=3)
    supervisor.start()

    assert supervisor.wait() == 0
    assert supervisor.worker_ids == ["box-gpu0-0", "box-gpu0-1", "box-gpu0-2", "box-gpu1-0", "box-gpu1-1", "box-gpu1-2"]
    for worker_id in supervisor.worker_ids:
        [run] = runs(tmp_path, worker_id)
        gpu = worker_id.split("-")[1].removeprefix("gpu")
        assert run["CUDA_VISIBLE_DEVICES"] == gpu and option(run, "--gpu") == gpu
        # An equal share, less a margin for the CUDA context; a fixed limit, so no growth.
        assert run["SWEEPER_GPU_MEMORY_MB"] == {"0": str(81559 // 3 - 768), "1": str(16384 // 3 - 768)}[gpu]
        assert run["TF_FORCE_GPU_ALLOW_GROWTH"] is None
        assert option(run, "--worker-id") == worker_id


def test_a_gpu_of_unknown_memory_is_shared_by_children_that_grow(tmp_path: Path, fake_child: list[str]) -> None:
    supervisor = Supervisor(NOWHERE, ["3"], host="box", child_command=fake_child, trials_per_gpu=2)
    supervisor.start()

    assert supervisor.wait() == 0
    for worker_id in ("box-gpu3-0", "box-gpu3-1"):
        [run] = runs(tmp_path, worker_id)
        assert (run["CUDA_VISIBLE_DEVICES"], run["SWEEPER_GPU_MEMORY_MB"], run["TF_FORCE_GPU_ALLOW_GROWTH"]) == \
            ("3", None, "true")


def test_a_gpu_too_small_to_share_is_refused_before_any_child_starts(fake_child: list[str]) -> None:
    with pytest.raises(GpuSelectionError, match=r"--trials-per-gpu 8 leaves 0 MB per trial on GPU 0 \(4096 MB"):
        Supervisor(NOWHERE, [Gpu("0", memory_mb=4096)], host="box", child_command=fake_child, trials_per_gpu=8)
    # Nothing was reserved: the ids are free for the next try.
    assert reserve("box-gpu0-0").worker_id == "box-gpu0-0"


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


def test_a_child_whose_worker_id_another_process_uses_is_not_restarted(
        tmp_path: Path, fake_child: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # A restart would claim under the same id again, taking the trial back from the other process.
    monkeypatch.setenv("FAKE_CHILD_MODE", "exit78_always")
    supervisor = Supervisor(NOWHERE, ["0"], host="box", child_command=fake_child, restart_backoff=0.05)
    supervisor.start()

    assert supervisor.wait() == 1
    assert len(runs(tmp_path, "box-gpu0")) == 1
    assert [death.returncode for death in supervisor.exits] == [EXIT_WORKER_ID_IN_USE]


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
    process = supervisor_process(fake_child, ["0", "1"], handles_signals=True)
    try:
        wait_until(lambda: all(events(tmp_path, f"box-gpu{gpu}") == ["ready"] for gpu in "01"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
    assert events(tmp_path, "box-gpu0") == events(tmp_path, "box-gpu1") == ["ready", "SIGTERM"]


def test_a_sigterm_that_reached_a_child_directly_too_is_not_forwarded_to_it_as_a_second_one(
        tmp_path: Path, fake_child: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # As Slurm's scancel or time limit (and systemd, docker) deliver it: to every process of the job at once.
    monkeypatch.setenv("FAKE_CHILD_MODE", "drain_like_the_agent")
    process = supervisor_process(fake_child, ["0", "1"], handles_signals=True)
    try:
        wait_until(lambda: all(events(tmp_path, f"box-gpu{gpu}") == ["ready"] for gpu in "01"))
        time.sleep(0.5)  # the supervisor's watch loop has seen each child's handler
        os.kill(runs(tmp_path, "box-gpu0")[0]["pid"], signal.SIGTERM)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
    # Each child got one SIGTERM, the first from the sender, the second from the supervisor, and drained.
    assert events(tmp_path, "box-gpu0") == events(tmp_path, "box-gpu1") == ["ready", "SIGTERM", "done"]


@pytest.mark.parametrize(("mode", "returncode", "cause"), [
    ("hold_trial_exit3_once", 3, "exit code 3"),
    ("hold_trial_sigkill_once", -signal.SIGKILL, "signal SIGKILL"),
])
def test_a_dead_child_fails_the_trial_it_held_as_a_crash_to_retry(
        tmp_path: Path, fake_child: list[str], monkeypatch: pytest.MonkeyPatch, client: Client, server: Any,
        caplog: pytest.LogCaptureFixture, mode: str, returncode: int, cause: str) -> None:
    sweep = client.create_sweep(digits_spec(trials=2))
    assignment = client.claim(ClaimRequest(worker_id="box-cpu0", host="box"))
    assert assignment is not None
    monkeypatch.setenv("FAKE_CHILD_MODE", mode)
    monkeypatch.setenv("FAKE_TRIAL_ID", str(assignment.trial_id))
    monkeypatch.setenv("FAKE_LEASE_TOKEN", str(assignment.lease_token))
    supervisor = Supervisor(server.url, [], host="box", child_command=fake_child, restart_backoff=0.05)
    supervisor.start()

    assert supervisor.wait() == 0
    assert supervisor.exits == [ChildExit("box-cpu0", None, returncode, trial_id=assignment.trial_id)]
    assert len(runs(tmp_path, "box-cpu0")) == 2  # restarted in the same seat
    trial = client.get_trial(assignment.trial_id)
    # Retried: pending again, with the attempt counted (a trial that kills every worker runs out of them).
    assert (trial["state"], trial["attempts"]) == ("pending", 1)
    assert trial["error"] == f"worker box-cpu0 died: {cause}"
    assert f"worker box-cpu0 {supervisor.exits[0].describe()}" in caplog.text
    assert client.get_sweep(sweep["id"])["trial_counts"]["failed"] == 0


def test_a_dead_childs_trial_reported_under_a_stale_token_changes_nothing(
        fake_child: list[str], monkeypatch: pytest.MonkeyPatch, client: Client, server: Any, tmp_path: Path) -> None:
    client.create_sweep(digits_spec(trials=1))
    old = client.claim(ClaimRequest(worker_id="box-cpu0", host="box"))
    newer = client.claim(ClaimRequest(worker_id="box-cpu0", host="box"))  # a newer claim holds the trial now
    assert old is not None and newer is not None and newer.lease_token > old.lease_token
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    monkeypatch.setenv("FAKE_CHILD_MODE", "hold_trial_exit3_once")
    monkeypatch.setenv("FAKE_TRIAL_ID", str(old.trial_id))
    monkeypatch.setenv("FAKE_LEASE_TOKEN", str(old.lease_token))
    monkeypatch.setenv("FAKE_CHECKPOINT_DIR", str(checkpoint))
    supervisor = Supervisor(server.url, [], host="box", child_command=fake_child, restart_backoff=0.05)
    supervisor.start()

    assert supervisor.wait() == 0
    trial = client.get_trial(old.trial_id)
    assert (trial["state"], trial["attempts"], trial["error"]) == ("running", 1, None)
    assert checkpoint.is_dir()


def test_a_crash_on_the_last_attempt_fails_the_trial_and_deletes_its_checkpoint(
        tmp_path: Path, fake_child: list[str], monkeypatch: pytest.MonkeyPatch, client: Client, server: Any) -> None:
    client.create_sweep(digits_spec(trials=1, max_attempts=1))
    assignment = client.claim(ClaimRequest(worker_id="box-cpu0", host="box"))
    assert assignment is not None
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "state.json").write_text("{}")
    monkeypatch.setenv("FAKE_CHILD_MODE", "hold_trial_exit3_once")
    monkeypatch.setenv("FAKE_TRIAL_ID", str(assignment.trial_id))
    monkeypatch.setenv("FAKE_LEASE_TOKEN", str(assignment.lease_token))
    monkeypatch.setenv("FAKE_CHECKPOINT_DIR", str(checkpoint))
    supervisor = Supervisor(server.url, [], host="box", child_command=fake_child, restart_backoff=0.05)
    supervisor.start()

    assert supervisor.wait() == 0
    assert client.get_trial(assignment.trial_id)["state"] == "failed"
    assert not checkpoint.exists()


def test_a_child_killed_while_stopping_has_its_trial_released(
        tmp_path: Path, fake_child: list[str], monkeypatch: pytest.MonkeyPatch, client: Client, server: Any) -> None:
    client.create_sweep(digits_spec(trials=1))
    assignment = client.claim(ClaimRequest(worker_id="box-cpu0", host="box"))
    assert assignment is not None
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    monkeypatch.setenv("FAKE_CHILD_MODE", "hold_trial_until_killed")
    monkeypatch.setenv("FAKE_TRIAL_ID", str(assignment.trial_id))
    monkeypatch.setenv("FAKE_LEASE_TOKEN", str(assignment.lease_token))
    monkeypatch.setenv("FAKE_CHECKPOINT_DIR", str(checkpoint))
    supervisor = Supervisor(server.url, [], host="box", child_command=fake_child)
    supervisor.start()
    wait_until(lambda: events(tmp_path, "box-cpu0") == ["ready"])

    supervisor.stop(timeout=0.5)

    trial = client.get_trial(assignment.trial_id)
    # Not the trial's fault: pending again with its attempt given back, and its checkpoint kept to resume.
    assert (trial["state"], trial["attempts"]) == ("pending", 0)
    assert checkpoint.is_dir()
    assert [death.signal_name for death in supervisor.exits] == ["SIGKILL"]


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


def test_a_child_keeps_its_worker_id_reserved_after_its_supervisor_is_killed(
        tmp_path: Path, fake_child: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CHILD_MODE", "outlive_the_supervisor")
    supervisor = supervisor_process(fake_child, [])
    try:
        wait_until(lambda: events(tmp_path, "box-cpu0") == ["ready"])
        supervisor.kill()
        supervisor.wait()

        # The orphaned child still holds box-cpu0: a new supervisor takes the next id.
        assert first_free_id("box-cpu0") == "box-cpu0-2"
    finally:
        supervisor.kill()
        [child] = runs(tmp_path, "box-cpu0")
        os.kill(child["pid"], signal.SIGKILL)
    # Once the child is gone too, the id is free again.
    wait_until(lambda: first_free_id("box-cpu0") == "box-cpu0")


def first_free_id(base: str) -> str:
    reserved = reserve(base)
    reserved.release()
    return reserved.worker_id


def _train_until_an_epoch_is_reported(client: Client, server: Any, signals: int) -> tuple[Supervisor, int]:
    """A real agent under a supervisor, training a trial of long epochs; `signals` SIGTERMs once it has
    reported its first epoch. The trial's id comes back with the supervisor."""
    # Epochs of 360 batches: a second or more, so the second signal lands while the first one's epoch runs.
    sweep = client.create_sweep(digits_spec(trials=1, epochs=200, hparams={"units": {"type": "discrete", "values": [8]},
                                                                           "batch_size": 4}))
    supervisor = Supervisor(server.url, [], cpu_workers=1, host="box", idle_exit=30)
    supervisor.start()
    trial_ids: list[int] = []

    def first_epoch_reported() -> bool:
        if not trial_ids:
            trial_ids.extend(trial["id"] for trial in client.list_trials(sweep["id"])["data"])
        return bool(trial_ids) and bool(client.get_trial(trial_ids[0])["history"])

    wait_until(first_epoch_reported, timeout=90)
    for _ in range(signals):
        supervisor.forward(signal.SIGTERM)
        time.sleep(0.3)
    return supervisor, trial_ids[0]


def test_a_sigterm_lets_real_agents_finish_the_epoch_and_release_their_trials(
        client: Client, server: Any, tmp_path: Path) -> None:
    supervisor, trial_id = _train_until_an_epoch_is_reported(client, server, signals=1)

    assert supervisor.wait() == 0
    assert supervisor.exits == []  # each child exited 0 after releasing its trial
    trial = client.get_trial(trial_id)
    assert (trial["state"], trial["attempts"]) == ("pending", 0)
    checkpoint = tmp_path / "runs" / str(trial["sweep_id"]) / f"trial-{trial['number']:04d}" / "checkpoint"
    # The checkpoint holds every epoch the server has: the one under way at the signal was finished.
    saved = TrialCheckpoint(checkpoint).load()
    assert saved is not None and saved.epochs_done == len(trial["history"]) >= 1


def test_a_second_sigterm_stops_real_agents_now_and_their_trials_are_released(
        client: Client, server: Any, tmp_path: Path) -> None:
    supervisor, trial_id = _train_until_an_epoch_is_reported(client, server, signals=2)

    started = time.monotonic()
    assert supervisor.wait() == 0
    assert time.monotonic() - started < 10
    assert [death.signal_name for death in supervisor.exits] == ["SIGTERM"]
    trial = client.get_trial(trial_id)
    assert (trial["state"], trial["attempts"]) == ("pending", 0)


@pytest.mark.parametrize("command", ["worker", "run"])
def test_the_cli_refuses_more_trials_per_gpu_than_its_memory_holds(
        command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import workers.gpus
    from cli import app

    # One 8 GB GPU, as nvidia-smi lists it (NVML left out, so a real driver cannot answer instead).
    monkeypatch.setattr(workers.gpus, "_import_nvml", lambda: None)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text('#!/bin/sh\nprintf "0, 8192, Tesla T4\\n"\n')
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    spec = tmp_path / "digits.json"
    spec.write_text(json.dumps(digits_spec()))
    arguments = ["worker", "--server", NOWHERE] if command == "worker" else \
        ["run", str(spec), "--logdir", str(tmp_path / "runs"), "--database-url", f"sqlite:///{tmp_path / 'db'}"]

    result = CliRunner().invoke(app, [*arguments, "--gpus", "0", "--trials-per-gpu", "16"])

    assert result.exit_code == 2, result.output
    assert "--trials-per-gpu 16 leaves 0 MB per trial on GPU 0 (8192 MB" in " ".join(result.output.split())
    assert not (tmp_path / "db").exists()  # refused before anything started


def test_a_trial_whose_worker_is_killed_is_retried_and_resumes_where_it_was(
        client: Client, server: Any, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    epochs = 6
    sweep = client.create_sweep(digits_spec(trials=1, epochs=epochs, hparams={
        "units": {"type": "discrete", "values": [8]}, "batch_size": 4, "lr_schedule": "exponential"}))
    supervisor = Supervisor(server.url, [], cpu_workers=1, host="box", idle_exit=3, restart_backoff=0.1)
    supervisor.start()
    try:
        wait_until(lambda: client.list_trials(sweep["id"])["data"], timeout=60)
        [trial] = client.list_trials(sweep["id"])["data"]
        wait_until(lambda: len(client.get_trial(trial["id"])["history"]) >= 2, timeout=90)
        process = supervisor.slots[0].process
        assert process is not None
        process.kill()  # as the kernel's OOM killer would
        assert supervisor.wait() == 0
    finally:
        supervisor.stop(timeout=5)

    assert [(death.signal_name, death.trial_id) for death in supervisor.exits] == [("SIGKILL", trial["id"])]
    done = client.get_trial(trial["id"])
    assert (done["state"], done["attempts"], done["worker_id"]) == ("completed", 2, "box-cpu0")
    assert [point["epoch"] for point in done["history"]] == list(range(epochs))
    trial_dir = tmp_path / "runs" / str(sweep["id"]) / f"trial-{trial['number']:04d}"
    train = EventAccumulator(str(trial_dir / "train"), size_guidance={"tensors": 0})
    train.Reload()
    # Each epoch's learning rate once: the killed attempt's epochs kept, the retry's following on.
    rates = train.Tensors("epoch_learning_rate")
    assert [event.step for event in rates] == list(range(epochs))
    # And the decay went on from where it was: a restarted schedule would jump back up.
    values = [float(tensor_util.make_ndarray(event.tensor_proto)) for event in rates]
    assert values == sorted(values, reverse=True) and len(set(values)) == epochs
    assert not (trial_dir / "checkpoint").exists()

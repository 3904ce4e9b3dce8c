"""One trainer per trial, with real processes: a supervisor killed while its child trains, a training child
killed alone, two agents given one worker id, and a report sent under a superseded lease.

`sweeper serve` and `sweeper worker` (or `python -m workers.agent`) run as subprocesses on a temporary
SQLite file; everything is observed through the REST API and the trial's TensorBoard files. Leases last
15 s and heartbeats come every second: long enough for a loaded 2-core machine, and no assertion waits
on any one heartbeat.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from e2e_processes import BIN, Processes, ServerApi, alive, free_port, kill, pids_with, wait_until

from sweeper.client import Client, LeaseLostError
from sweeper.messages import ClaimRequest, CompleteReport, LeaseConflictReason, MetricsReport

pytestmark = pytest.mark.e2e

EXIT_WORKER_ID_IN_USE = 78  # workers.handoff's: the agent refuses an id another process holds
LEASE_SECONDS = 15
HEARTBEAT_SECONDS = 1


def spec(epochs: int) -> dict:
    """One trial: a wide MLP on digits in batches of 16, so each epoch takes a while on a CPU."""
    return {"name": "one-trainer", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
            "hparams": {"units": 512, "depth": 3, "batch_size": 16}, "search": {"strategy": "grid"},
            "train": {"epochs": epochs}}


class Service(ServerApi):
    """A `sweeper serve` process, and the workers and agents started against it."""

    def __init__(self, processes: Processes, tmp_path: Path):
        self.processes, self.logdir = processes, tmp_path / "runs"
        self.url = f"http://127.0.0.1:{free_port()}"
        self.processes.start("server", str(BIN / "sweeper"), "serve", "--port", self.url.rsplit(":", 1)[1],
                             "--database-url", f"sqlite:///{tmp_path / 's.db'}", "--logdir", str(self.logdir),
                             "--lease-seconds", str(LEASE_SECONDS), "--heartbeat-seconds", str(HEARTBEAT_SECONDS))
        wait_until(lambda: httpx.get(f"{self.url}/healthz").status_code == 200, 60, "the server")

    def worker(self, name: str) -> subprocess.Popen:
        """`sweeper worker` with one CPU worker, in a process group of its own, as a shell starts it."""
        return self.processes.start(name, str(BIN / "sweeper"), "worker", "--server", self.url, "--gpus", "none",
                                    "--cpu-workers", "1", own_group=True)

    def agent(self, name: str, worker_id: str, lock_dir: Path) -> subprocess.Popen:
        """`python -m workers.agent` on its own, reserving its id in `lock_dir` (one folder per host)."""
        return self.processes.start(name, sys.executable, "-m", "workers.agent", "--server", self.url,
                                    "--worker-id", worker_id, env={**os.environ, "SWEEPER_LOCK_DIR": str(lock_dir)})

    def training_children(self) -> list[int]:
        return pids_with("workers.agent", self.url)

    def trial_with_epochs(self, sweep_id: int, epochs: int) -> dict:
        """The sweep's one trial, once it has reported `epochs` epochs."""
        def reported() -> dict | None:
            trials = self.get(f"/sweeps/{sweep_id}/trials")["data"]
            trial = self.get(f"/trials/{trials[0]['id']}") if trials else None
            return trial if trial is not None and len(trial["history"]) >= epochs else None
        return wait_until(reported, 300, f"{epochs} epochs of sweep {sweep_id}'s trial", interval=0.5)

    def ended(self, sweep_id: int, timeout: float = 600) -> dict:
        return wait_until(lambda: (s := self.get(f"/sweeps/{sweep_id}"))["status"] in ("completed", "failed") and s,
                          timeout, f"sweep {sweep_id} to end", interval=1)

    def assert_each_epoch_once(self, trial: dict, epochs: int) -> None:
        """In the server's history, and in the trial's TensorBoard scalars (every event file counted, so an
        epoch written twice by two processes shows even where TensorBoard would show only one)."""
        history = self.get(f"/trials/{trial['id']}")["history"]
        assert [point["epoch"] for point in history] == list(range(epochs)), history
        trial_dir = self.logdir / str(trial["sweep_id"]) / f"trial-{trial['number']:04d}"
        for folder in ("train", "validation"):
            steps = epoch_scalar_steps(trial_dir / folder)
            assert "epoch_loss" in steps, (folder, steps)
            for tag, written in steps.items():
                assert sorted(written) == list(range(epochs)), (folder, tag, Counter(written))


def epoch_scalar_steps(folder: Path) -> dict[str, list[int]]:
    """Every step written for each `epoch_*` scalar in the folder's event files."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps: dict[str, list[int]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag.startswith("epoch_"):
                    steps.setdefault(value.tag, []).append(event.step)
    return steps


@pytest.fixture
def service(processes: Processes, tmp_path: Path):
    running = Service(processes, tmp_path)
    yield running
    # The supervisors first (each stops its own children), then any child that outlived its supervisor.
    processes.stop_all()
    kill(running.training_children())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds processes in /proc (Linux)")
def test_a_supervisor_killed_mid_trial_leaves_no_second_trainer_and_the_trial_finishes_with_each_epoch_once(
        service: Service, tmp_path: Path) -> None:
    epochs = 30
    first = service.worker("worker")
    sweep_id = service.submit(spec(epochs))
    trial = service.trial_with_epochs(sweep_id, 4)  # at epoch 4
    [child] = service.training_children()

    os.killpg(os.getpgid(first.pid), signal.SIGKILL)  # kill -9 -- -<pgid>: the supervisor's group
    first.wait()
    service.worker("worker-again")

    # The child runs in its own group, so the signal passed it by: it notices its supervisor is gone,
    # hands the trial back (within a heartbeat and a batch) and exits, rather than train on beside the
    # new supervisor's worker.
    wait_until(lambda: not alive(child), 30, "the orphaned training child to exit")
    sweep = service.ended(sweep_id)

    done = service.get(f"/trials/{trial['id']}")
    assert (sweep["status"], done["state"]) == ("completed", "completed"), done.get("error")
    service.assert_each_epoch_once(done, epochs)
    orphan_log = (tmp_path / "worker.log").read_text()  # the child wrote to its supervisor's output
    released = f"releasing sweep {trial['sweep_id']} trial {trial['number']} (id {trial['id']})"
    assert "lost its supervisor" in orphan_log and released in orphan_log, orphan_log[-3000:]
    assert done["attempts"] == 1  # handed back, not lost: the release gave its attempt back


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds processes in /proc (Linux)")
def test_a_training_child_killed_alone_is_restarted_and_its_trial_resumes_with_each_epoch_once(
        service: Service) -> None:
    epochs = 12
    supervisor = service.worker("worker")
    sweep_id = service.submit(spec(epochs))
    trial = service.trial_with_epochs(sweep_id, 4)
    [child] = service.training_children()

    os.kill(child, signal.SIGKILL)  # as the kernel's OOM killer would
    sweep = service.ended(sweep_id)

    done = service.get(f"/trials/{trial['id']}")
    assert (sweep["status"], done["state"]) == ("completed", "completed"), done.get("error")
    assert done["attempts"] == 2  # the crash counted an attempt; the retry resumed from the checkpoint
    service.assert_each_epoch_once(done, epochs)
    assert supervisor.poll() is None and service.training_children() != [child]


def test_a_second_agent_given_a_worker_id_in_use_on_this_host_refuses_to_start(
        service: Service, tmp_path: Path) -> None:
    epochs = 6
    locks = tmp_path / "locks"
    first = service.agent("agent", "box-cpu0", locks)
    sweep_id = service.submit(spec(epochs))
    trial = service.trial_with_epochs(sweep_id, 1)

    second = service.agent("agent-again", "box-cpu0", locks)

    assert second.wait(timeout=120) == EXIT_WORKER_ID_IN_USE
    refusal = (tmp_path / "agent-again.log").read_text()
    assert f"worker id 'box-cpu0' is in use: another process on this host holds its lock file " \
           f"{locks / 'box-cpu0.lock'}" in refusal, refusal
    sweep = service.ended(sweep_id)
    done = service.get(f"/trials/{trial['id']}")
    assert (sweep["status"], done["state"], done["attempts"]) == ("completed", "completed", 1)
    service.assert_each_epoch_once(done, epochs)
    assert first.poll() is None  # the first agent trained on undisturbed, and waits for more work


def test_two_agents_under_one_worker_id_on_two_hosts_never_train_one_trial_together(
        service: Service, tmp_path: Path) -> None:
    epochs = 12
    first = service.agent("host-a", "box-cpu0", tmp_path / "host-a")  # each "host" its own lock folder
    sweep_id = service.submit(spec(epochs))
    trial = service.trial_with_epochs(sweep_id, 3)

    service.agent("host-b", "box-cpu0", tmp_path / "host-b")

    # The second's claim took the trial over under a new token. The first, refused at its next heartbeat,
    # stops within an interval, sends and writes nothing more, and exits rather than take the trial back.
    assert first.wait(timeout=120) == EXIT_WORKER_ID_IN_USE
    first_log = (tmp_path / "host-a.log").read_text()
    assert "worker id 'box-cpu0' is in use by another process" in first_log, first_log[-3000:]
    assert "releasing sweep" not in first_log and "finished" not in first_log
    sweep = service.ended(sweep_id)
    done = service.get(f"/trials/{trial['id']}")
    assert (sweep["status"], done["state"], done["attempts"]) == ("completed", "completed", 1)
    service.assert_each_epoch_once(done, epochs)


def test_a_complete_under_a_stale_token_after_a_reclaim_gets_409_and_changes_nothing(service: Service) -> None:
    service.submit(spec(epochs=2))
    worker = ClaimRequest(worker_id="box-cpu0", host="box")
    with Client(service.url, retries=0) as client:
        old = client.claim(worker)
        assert old is not None
        client.report_metrics(old.trial_id, MetricsReport(worker_id="box-cpu0", lease_token=old.lease_token, epoch=0,
                                                          metrics={"val_accuracy": 0.5}))
        newer = client.claim(worker)  # the same worker id claims again, as a restarted worker would
        assert newer is not None and newer.trial_id == old.trial_id and newer.lease_token > old.lease_token
        before = client.get_trial(old.trial_id)

        stale = CompleteReport(worker_id="box-cpu0", lease_token=old.lease_token, metrics={"val_accuracy": 0.99})
        with pytest.raises(LeaseLostError) as refused:
            client.complete(old.trial_id, stale)

        assert refused.value.status_code == 409 and refused.value.reason is LeaseConflictReason.superseded
        assert str(old.lease_token) in str(refused.value) and str(newer.lease_token) in str(refused.value)
        assert client.get_trial(old.trial_id) == before
        assert (before["state"], before["metrics"]) == ("running", {})

        # The holder's complete goes through; sent again (a retry after a lost answer), it gets the stored trial.
        current = CompleteReport(worker_id="box-cpu0", lease_token=newer.lease_token, metrics={"val_accuracy": 0.75})
        done = client.complete(newer.trial_id, current)
        again = client.complete(newer.trial_id, current)
        assert done["state"] == again["state"] == "completed"
        assert done["metrics"] == again["metrics"] == {"val_accuracy": 0.75}
        with pytest.raises(LeaseLostError):
            client.complete(old.trial_id, stale)
        assert client.get_trial(old.trial_id)["metrics"] == {"val_accuracy": 0.75}

"""The worker agent against a real server: real Keras sweeps (resume, cancel, out of memory), then the
protocol's edge cases with a scripted trainer in place of Keras.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sweeper import NonFiniteLossError, RetryableError, TrialAbandonedError
from sweeper.client import ApiError, Client
from sweeper.messages import Action, Assignment, ClaimRequest, Directive, HeartbeatRequest, ReleaseReport
from sweeper.training.checkpoints import TrialCheckpoint, checkpoint_folder
from workers.agent import Agent, FatalWorkerError
from workers.handoff import EXIT_SERVER_UNREACHABLE, EXIT_WORKER_ID_IN_USE
from workers.identity import WorkerIdInUseError, reserve
from workers_testing import catches, digits_spec, free_port, wait_until

pytestmark = pytest.mark.training
EpochCallback = Callable[[int, dict[str, float]], Directive]
Interrupt = Callable[[], "str | None"]


@dataclass(frozen=True)
class Result:
    """The shape of sweeper.training.runner.TrialResult, without importing TensorFlow."""

    metrics: dict[str, float]
    epochs_run: int
    stopped_by: str | None = None

    @property
    def stopped(self) -> bool:
        return self.stopped_by in ("stop", "prune", "cancel")


Trainer = Callable[..., Result]


def scripted_trainer(epochs: int = 2, seconds_per_epoch: float = 0.0, batches_per_epoch: int = 1,
                     before_epoch: Callable[[int], None] | None = None) -> Trainer:
    """Epochs of `batches_per_epoch` sleeps, asking `interrupt` after each batch like the Keras runner, and
    saving a stand-in checkpoint (the epochs done) after each epoch that training goes on from."""
    def train(assignment: Assignment, on_epoch_end: EpochCallback, interrupt: Interrupt) -> Result:
        metrics: dict[str, float] = {}
        checkpoint = Path(checkpoint_folder(assignment))
        for epoch in range(epochs):
            if before_epoch is not None:
                before_epoch(epoch)
            for _ in range(batches_per_epoch):
                time.sleep(seconds_per_epoch / batches_per_epoch)
                if (action := interrupt()) is not None:
                    return Result(metrics, epoch, stopped_by=action)
            metrics = {"loss": 1.0 / (epoch + 1), "val_accuracy": 0.5 + epoch / 10}
            # The agent answers with the server's Directive; its action is what this stand-in obeys.
            answer = on_epoch_end(epoch, dict(metrics)).action
            if answer in ("continue", "stop"):
                checkpoint.mkdir(parents=True, exist_ok=True)
                (checkpoint / "epochs_done").write_text(str(epoch + 1))
            if answer != "continue":
                return Result(metrics, epoch + 1, stopped_by=answer)
        return Result(metrics, epochs)
    return train


def make_agent(client: Client, **options: Any) -> Agent:
    defaults: dict[str, Any] = {"poll_interval": 0.1, "heartbeat_interval": 0.2, "idle_exit": 0.5}
    return Agent(client, "test-cpu0", "test-host", **{**defaults, **options})


def trials(client: Client, sweep_id: int) -> list[dict[str, Any]]:
    return sorted(client.list_trials(sweep_id)["data"], key=lambda trial: trial["id"])


def recording(client: Client, reports: tuple[str, ...] = ("fail", "release")) -> list[tuple[str, int, Any]]:
    """Record every report of these kinds the agent sends (what the server stores of them may be less)."""
    sent: list[tuple[str, int, Any]] = []
    for name in reports:
        real = getattr(client, name)

        def record(trial_id: int, report: Any, real: Any = real, name: str = name) -> Any:
            sent.append((name, trial_id, report))
            return real(trial_id, report)

        setattr(client, name, record)
    return sent


def test_agent_trains_every_trial_of_a_keras_sweep(client: Client, tmp_path: Path) -> None:
    sweep = client.create_sweep(digits_spec(trials=2, epochs=2))
    agent = Agent(client, "test-cpu0", "test-host", poll_interval=0.2, heartbeat_interval=1.0, idle_exit=2)

    agent.run()

    assert agent.trials_run == 2
    assert client.get_sweep(sweep["id"])["status"] == "completed"
    for trial in trials(client, sweep["id"]):
        assert trial["state"] == "completed"
        assert trial["worker_id"] == "test-cpu0"
        assert 0.0 <= trial["metrics"]["val_accuracy"] <= 1.0
        history = client.get_trial(trial["id"])["history"]
        assert [point["epoch"] for point in history] == [0, 1]
        assert {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(history[-1]["metrics"])
        assert (tmp_path / "runs" / str(sweep["id"]) / f"trial-{trial['number']:04d}" / "train").is_dir()


def test_a_trial_that_raises_is_failed_with_a_summary_and_its_traceback_and_the_agent_goes_on(
        client: Client) -> None:
    sweep = client.create_sweep(digits_spec(trials=2))
    sent = recording(client)

    def explode(epoch: int) -> None:
        raise ValueError("exploding gradients\nin layer dense_3")

    make_agent(client, run_trial=scripted_trainer(before_epoch=explode)).run()

    for trial in trials(client, sweep["id"]):
        assert trial["state"] == "failed"
        assert trial["error"] == "ValueError: exploding gradients"
    assert [(name, report.kind, report.retryable) for name, _, report in sent] == [("fail", "error", False)] * 2
    trace = sent[0][2].traceback
    assert trace.startswith("Traceback (most recent call last)") and "in explode" in trace
    assert trace.rstrip().endswith("in layer dense_3")


@pytest.mark.parametrize(("error", "kind", "retryable", "state", "message"), [
    (RetryableError("the feature store timed out"), "error", True, "pending",
     "RetryableError: the feature store timed out"),
    # Sweeper's own NaN message needs no class name in front of it.
    (NonFiniteLossError("loss became NaN at epoch 1 (batch 2)"), "nan", False, "failed",
     "loss became NaN at epoch 1 (batch 2)"),
])
def test_a_trial_failure_is_reported_with_its_kind(client: Client, error: Exception, kind: str, retryable: bool,
                                                   state: str, message: str) -> None:
    sweep = client.create_sweep(digits_spec(trials=1, max_attempts=3))
    sent = recording(client)

    def fail_once(epoch: int) -> None:
        if not sent:
            raise error

    agent = make_agent(client, run_trial=scripted_trainer(before_epoch=fail_once))
    agent.run()

    [(name, _, report), *_] = sent
    assert (name, report.kind, report.retryable, report.error) == ("fail", kind, retryable, message)
    [trial] = trials(client, sweep["id"])
    # A retryable failure is tried again (here by the same agent, which completes it); the rest fail for good.
    assert trial["state"] == ("completed" if retryable else state)
    assert trial["attempts"] == (2 if retryable else 1)


def timed_calls(client: Client, method: str) -> list[float]:
    """When (monotonic seconds) each later call to `client.<method>` was made; the calls still go through."""
    times: list[float] = []
    real = getattr(client, method)

    def timed(*args: Any, **kwargs: Any) -> Any:
        times.append(time.monotonic())
        return real(*args, **kwargs)

    setattr(client, method, timed)
    return times


def test_heartbeats_are_sent_with_the_claims_lease_token_while_a_trial_trains(client: Client) -> None:
    client.create_sweep(digits_spec(trials=1))
    beats: list[HeartbeatRequest] = []
    real_heartbeat = client.heartbeat

    def counting_heartbeat(trial_id: int, request: HeartbeatRequest) -> Any:
        beats.append(request)
        return real_heartbeat(trial_id, request)

    client.heartbeat = counting_heartbeat  # type: ignore[method-assign]
    make_agent(client, heartbeat_interval=0.1, run_trial=scripted_trainer(epochs=2, seconds_per_epoch=0.5)).run()

    assert len(beats) >= 5
    [trial] = client.list_trials(client.list_sweeps()["data"][0]["id"])["data"]
    assert trial["state"] == "completed"
    assert set(beats) == {HeartbeatRequest(worker_id="test-cpu0", lease_token=1)}


def test_a_lost_lease_drops_the_trial_silently_and_the_agent_goes_on(
        start_server: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    # Long enough that the thief, heartbeating every 0.1 s, keeps its lease on a loaded machine: in the full
    # suite's process a 2 s lease once ran out between two of its heartbeats, and the agent's next claim took
    # the trial back.
    server = start_server(lease_seconds=5)
    with Client(server.url, retries=1, backoff=0.05) as client:
        sweep = client.create_sweep(digits_spec(trials=1))
        thief: list[Assignment] = []
        thief_done = threading.Event()

        def thief_keeps_its_lease() -> None:
            beat = HeartbeatRequest(worker_id="thief", lease_token=thief[0].lease_token)
            while not thief_done.wait(0.1):
                try:
                    client.heartbeat(thief[0].trial_id, beat)
                except ApiError:
                    pass  # one slow or refused beat on a loaded machine must not end the thief's heartbeats

        def lease_expires_and_another_worker_claims(epoch: int) -> None:
            if epoch == 0:
                time.sleep(5.5)  # no heartbeat in time: the lease runs out
                stolen = client.claim(ClaimRequest(worker_id="thief", host="other-host"))
                assert stolen is not None
                thief.append(stolen)
                threading.Thread(target=thief_keeps_its_lease, daemon=True).start()

        raised: list[BaseException] = []

        def train(assignment: Assignment, on_epoch_end: EpochCallback, interrupt: Interrupt) -> Result:
            try:
                return scripted_trainer(epochs=3, before_epoch=lease_expires_and_another_worker_claims)(
                    assignment, on_epoch_end, interrupt)
            except BaseException as error:
                raised.append(error)
                raise

        sent = recording(client, ("complete", "fail", "release"))
        agent = make_agent(client, heartbeat_interval=30, run_trial=train)
        try:
            agent.run()
            [trial] = trials(client, sweep["id"])
        finally:
            thief_done.set()

        assert thief[0].trial_id == trial["id"]
        assert trial["state"] == "running" and trial["worker_id"] == "thief"
        # The late epoch report was refused; the runner was told to write nothing more, and no report followed.
        assert [type(error) for error in raised] == [TrialAbandonedError]
        assert trial["metrics"] == {} and sent == []
        assert f"dropping sweep {trial['sweep_id']} trial {trial['number']} (id {trial['id']})" in caplog.text


def test_shutdown_finishes_the_epoch_and_releases_the_trial_without_using_an_attempt(client: Client) -> None:
    sweep = client.create_sweep(digits_spec(trials=2))
    sent = recording(client)
    agents: list[Agent] = []
    agent = make_agent(client, idle_exit=None, run_trial=scripted_trainer(
        epochs=5, seconds_per_epoch=0.2, batches_per_epoch=4,
        before_epoch=lambda epoch: agents[0].shutdown() if epoch == 1 else None))  # as on a first SIGTERM
    agents.append(agent)

    agent.run()

    [(name, trial_id, report)] = sent
    assert name == "release" and isinstance(report, ReleaseReport)
    assert report.epochs_done == 2  # epoch 1, under way at the signal, was finished first
    assert "shut down after 2 epoch(s)" in report.reason
    assert agent.trials_run == 1  # and the second trial was never claimed
    trial = client.get_trial(trial_id)
    assert (trial["state"], trial["attempts"]) == ("pending", 0)
    assert [point["epoch"] for point in trial["history"]] == [0, 1]
    again = client.claim(ClaimRequest(worker_id="another", host="test-host"))
    assert again is not None and (again.trial_id, again.attempt) == (trial_id, 1)
    assert client.get_sweep(sweep["id"])["trial_counts"]["failed"] == 0


def test_a_cancelled_sweep_stops_its_trial_within_a_heartbeat(client: Client) -> None:
    sweep = client.create_sweep(digits_spec(trials=2))
    sent = recording(client)
    stopped_at: list[float] = []
    cancelled_at: list[float] = []

    def cancel_during_epoch(epoch: int) -> None:
        if epoch == 1:
            cancelled_at.append(time.monotonic())
            threading.Timer(0.05, client.cancel_sweep, args=[sweep["id"]]).start()

    def train(assignment: Assignment, on_epoch_end: EpochCallback, interrupt: Interrupt) -> Result:
        def watched() -> str | None:
            action = interrupt()
            if action is not None and not stopped_at:
                stopped_at.append(time.monotonic())
            return action
        # Epochs far longer than a heartbeat: only a check after each batch can stop in time.
        return scripted_trainer(epochs=3, seconds_per_epoch=5.0, batches_per_epoch=100,
                                before_epoch=cancel_during_epoch)(assignment, on_epoch_end, watched)

    agent = make_agent(client, heartbeat_interval=0.2, run_trial=train)
    started = time.monotonic()
    agent.run()

    assert stopped_at[0] - cancelled_at[0] < 2.0  # one heartbeat (0.2 s), a batch, and slack; an epoch is 5 s
    assert time.monotonic() - started < 15
    [(name, trial_id, report)] = sent
    assert (name, report.error, report.kind, report.retryable) == ("fail", "cancelled", "error", False)
    assert client.get_trial(trial_id)["state"] == "cancelled"
    assert agent.trials_run == 1  # the cancelled sweep's other trial was never handed out


def test_heartbeats_follow_the_interval_the_server_assigns(start_server: Callable[..., Any]) -> None:
    server = start_server(heartbeat_seconds=0.1, lease_seconds=5)
    with Client(server.url, retries=2, backoff=0.05) as client:
        client.create_sweep(digits_spec(trials=1))
        beats = timed_calls(client, "heartbeat")
        make_agent(client, heartbeat_interval=None, run_trial=scripted_trainer(epochs=2, seconds_per_epoch=0.6)).run()

    assert len(beats) >= 8  # 1.2 s of training at 0.1 s a beat (the agent's own default would be 10 s)


def test_a_worker_keeps_training_through_a_short_server_outage(start_server: Callable[..., Any]) -> None:
    port = free_port()
    first = start_server(port=port)
    with Client(first.url, retries=8, backoff=0.2, max_backoff=1.0) as client:
        sweep = client.create_sweep(digits_spec(trials=1))
        outages: list[threading.Thread] = []

        def outage_during_epoch_1(epoch: int) -> None:
            if epoch == 1:
                # Down for a second and a half, heartbeats and the epoch's report included, then back.
                first.stop()
                outages.append(threading.Timer(1.5, start_server, kwargs={"port": port}))
                outages[0].start()

        agent = make_agent(client, heartbeat_interval=0.2, run_trial=scripted_trainer(
            epochs=4, seconds_per_epoch=0.3, before_epoch=outage_during_epoch_1))
        agent.run()
        outages[0].join()

        [trial] = trials(client, sweep["id"])
        assert trial["state"] == "completed" and trial["attempts"] == 1
        assert [point["epoch"] for point in client.get_trial(trial["id"])["history"]] == [0, 1, 2, 3]


def test_shutdown_wakes_an_idle_agent(client: Client) -> None:
    agent = make_agent(client, poll_interval=30, idle_exit=None)
    threading.Timer(0.3, agent.shutdown).start()

    started = time.monotonic()
    agent.run()

    assert time.monotonic() - started < 5


def test_a_trainer_that_cannot_load_releases_the_trial_and_stops_the_worker(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    import sweeper.training

    # As if TensorFlow were broken on this host: importing the runner fails.
    monkeypatch.delattr(sweeper.training, "runner", raising=False)
    monkeypatch.setitem(sys.modules, "sweeper.training.runner", None)
    sweep = client.create_sweep(digits_spec(trials=1))

    with pytest.raises(FatalWorkerError, match="cannot load the trainer: ModuleNotFoundError"):
        make_agent(client).run()
    [trial] = trials(client, sweep["id"])
    assert trial["state"] == "pending"


def test_the_entry_point_logs_with_the_worker_id_and_exits_when_idle(server: Any) -> None:
    done = subprocess.run([sys.executable, "-m", "workers.agent", "--server", server.url, "--worker-id", "box-cpu7",
                           "--idle-exit", "0.3", "--poll-interval", "0.1"],
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and all("[box-cpu7]" in line for line in lines)
    assert "no work for" in done.stderr


def test_the_entry_point_exits_with_tempfail_when_the_server_stays_away() -> None:
    done = subprocess.run([sys.executable, "-m", "workers.agent", "--server", f"http://127.0.0.1:{free_port()}",
                           "--worker-id", "box-cpu7", "--retries", "1"], capture_output=True, text=True, timeout=60)

    assert done.returncode == EXIT_SERVER_UNREACHABLE == 75
    assert "is unreachable" in done.stderr


# -- fencing, orphans and identity ----------------------------------------------------------------------

def test_a_heartbeat_refused_for_a_newer_claim_stops_training_within_an_interval_and_sends_no_report(
        client: Client) -> None:
    sweep = client.create_sweep(digits_spec(trials=2))
    sent = recording(client, ("complete", "fail", "release"))
    newer: list[Assignment] = []
    claimed_at: list[float] = []
    ended: list[tuple[float, BaseException]] = []
    seconds_per_epoch = 4.0

    def another_process_claims_under_this_id(epoch: int) -> None:
        if epoch == 1:
            claimed = client.claim(ClaimRequest(worker_id="test-cpu0", host="other-host"))
            assert claimed is not None
            newer.append(claimed)
            claimed_at.append(time.monotonic())

    def train(assignment: Assignment, on_epoch_end: EpochCallback, interrupt: Interrupt) -> Result:
        # Epochs far longer than a heartbeat (0.2 s): only the heartbeat's 409 can stop one in time.
        trainer = scripted_trainer(epochs=3, seconds_per_epoch=seconds_per_epoch, batches_per_epoch=100,
                                   before_epoch=another_process_claims_under_this_id)
        try:
            return trainer(assignment, on_epoch_end, interrupt)
        except BaseException as error:
            ended.append((time.monotonic(), error))
            raise

    agent = make_agent(client, heartbeat_interval=0.2, run_trial=train)
    # The newer claim was made under this worker's own id: the worker stops rather than take it back.
    with pytest.raises(WorkerIdInUseError, match="worker id 'test-cpu0' is in use by another process"):
        agent.run()

    [(stopped_at, error)] = ended
    assert isinstance(error, TrialAbandonedError)
    assert stopped_at - claimed_at[0] < seconds_per_epoch  # mid-epoch, not at its end
    assert sent == []
    trial = client.get_trial(newer[0].trial_id)
    assert (trial["state"], trial["worker_id"], trial["attempts"]) == ("running", "test-cpu0", 1)
    assert [point["epoch"] for point in trial["history"]] == [0]
    # The newer claim's holder goes on undisturbed, and the sweep's other trial was never claimed.
    beat = HeartbeatRequest(worker_id="test-cpu0", lease_token=newer[0].lease_token)
    assert client.heartbeat(newer[0].trial_id, beat).action is Action.continue_
    assert [trial["id"] for trial in trials(client, sweep["id"]) if trial["state"] != "pending"] == [newer[0].trial_id]


def test_an_orphaned_agent_stops_after_the_batch_releases_its_trial_with_its_token_and_exits(
        client: Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import workers.orphans

    sweep = client.create_sweep(digits_spec(trials=2))
    sent = recording(client, ("complete", "fail", "release"))
    died_at: list[float] = []
    interrupts_after: list[Action | None] = []
    seconds_per_epoch = 4.0

    def supervisor_dies(epoch: int) -> None:
        if epoch == 1:
            # As after the supervisor's death: this process was adopted by init.
            monkeypatch.setattr(workers.orphans.os, "getppid", lambda: 1)
            died_at.append(time.monotonic())

    def train(assignment: Assignment, on_epoch_end: EpochCallback, interrupt: Interrupt) -> Result:
        def watched() -> Action | None:
            action = interrupt()
            if died_at:
                interrupts_after.append(action)
            return action
        return scripted_trainer(epochs=3, seconds_per_epoch=seconds_per_epoch, batches_per_epoch=100,
                                before_epoch=supervisor_dies)(assignment, on_epoch_end, watched)

    supervisor_pid = os.getppid()
    agent = make_agent(client, idle_exit=None, heartbeat_interval=0.2, supervisor_pid=supervisor_pid, run_trial=train)
    agent.run()  # returns: the agent exits with its supervisor gone

    assert interrupts_after == [Action.stop]  # the first batch after the death ends training
    [(name, trial_id, report)] = sent
    assert name == "release" and isinstance(report, ReleaseReport)
    assert (report.lease_token, report.epochs_done) == (1, 1)
    assert f"lost its supervisor (pid {supervisor_pid})" in report.reason
    trial = client.get_trial(trial_id)
    assert (trial["state"], trial["attempts"]) == ("pending", 0)
    assert [point["epoch"] for point in trial["history"]] == [0]
    # The checkpoint of the last finished epoch stays for the next attempt.
    checkpoint = tmp_path / "runs" / str(sweep["id"]) / f"trial-{trial['number']:04d}" / "checkpoint"
    assert (checkpoint / "epochs_done").read_text() == "1"
    assert agent.trials_run == 1  # and the sweep's other trial was never claimed
    assert all(trial["state"] == "pending" for trial in trials(client, sweep["id"]))


def test_the_agent_deletes_a_trials_checkpoint_once_the_server_shows_it_finished(client: Client,
                                                                                 tmp_path: Path) -> None:
    sweep = client.create_sweep(digits_spec(trials=1, epochs=3))

    make_agent(client, run_trial=scripted_trainer(epochs=3)).run()

    [trial] = trials(client, sweep["id"])
    assert trial["state"] == "completed"
    assert not (tmp_path / "runs" / str(sweep["id"]) / f"trial-{trial['number']:04d}" / "checkpoint").exists()


def test_an_agent_started_on_its_own_refuses_a_worker_id_another_process_on_this_host_holds(server: Any) -> None:
    command = [sys.executable, "-m", "workers.agent", "--server", server.url, "--worker-id", "box-cpu7",
               "--idle-exit", "0.3", "--poll-interval", "0.1"]
    held = reserve("box-cpu7")
    try:
        refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    finally:
        held.release()

    assert refused.returncode == EXIT_WORKER_ID_IN_USE
    assert "worker id 'box-cpu7' is in use" in refused.stderr and str(held.path) in refused.stderr
    # Free again, the same id starts.
    assert subprocess.run(command, capture_output=True, text=True, timeout=60).returncode == 0


# -- real Keras trials --------------------------------------------------------------------------------

def test_a_released_trial_resumes_from_its_checkpoint_on_the_next_claim(client: Client, tmp_path: Path) -> None:
    sweep = client.create_sweep(digits_spec(trials=1, epochs=4))
    reported: list[int] = []
    real_report = client.report_metrics

    def note_epoch(trial_id: int, report: Any) -> Any:
        reported.append(report.epoch)
        if report.epoch == 1 and first.trials_run == 0:
            first.shutdown()  # as on a first SIGTERM, during epoch 1's report
        return real_report(trial_id, report)

    client.report_metrics = note_epoch  # type: ignore[method-assign]
    first = Agent(client, "test-cpu0", "test-host", poll_interval=0.2, heartbeat_interval=1.0, idle_exit=2)
    first.run()
    [trial] = trials(client, sweep["id"])
    checkpoint = tmp_path / "runs" / str(sweep["id"]) / f"trial-{trial['number']:04d}" / "checkpoint"
    saved = TrialCheckpoint(checkpoint).load()
    assert trial["state"] == "pending" and saved is not None and saved.epochs_done == 2

    Agent(client, "test-cpu1", "test-host", poll_interval=0.2, heartbeat_interval=1.0, idle_exit=2).run()

    assert reported == [0, 1, 2, 3]  # each epoch trained (and reported) once, across both workers
    [trial] = trials(client, sweep["id"])
    assert (trial["state"], trial["worker_id"], trial["attempts"]) == ("completed", "test-cpu1", 1)
    assert [point["epoch"] for point in client.get_trial(trial["id"])["history"]] == [0, 1, 2, 3]
    assert not checkpoint.exists()


def test_out_of_memory_fails_the_trial_with_its_hparams_and_the_worker_goes_on(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow as tf

    from sweeper import _registry
    from sweeper.training.models import build_mlp

    def mlp_too_big_at_8_units(hparams: dict[str, Any], info: Any) -> Any:
        if hparams["units"] == 8:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[8,1048576]")
        return build_mlp(hparams, info)

    monkeypatch.setattr(_registry, "models", _registry.Registry("model", {"mlp": mlp_too_big_at_8_units}))
    sweep = client.create_sweep(digits_spec(trials=2, epochs=1))
    sent = recording(client)

    agent = Agent(client, "test-cpu0", "test-host", poll_interval=0.2, heartbeat_interval=1.0, idle_exit=2)
    agent.run()

    [(name, trial_id, report)] = sent
    assert (name, report.kind, report.retryable) == ("fail", "oom", False)
    assert report.error.startswith('out of memory with hparams {"batch_size": 64, "units": 8}')
    assert "ResourceExhaustedError" in report.traceback
    states = {trial["id"]: trial["state"] for trial in trials(client, sweep["id"])}
    assert states.pop(trial_id) == "failed"
    assert list(states.values()) == ["completed"]  # the same process trained the next trial
    assert agent.trials_run == 2


def test_cancelling_a_sweep_stops_a_keras_trial_mid_epoch(client: Client, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    # Epochs of 1,437 one-example batches: seconds each, where a heartbeat is 0.2 s.
    sweep = client.create_sweep(digits_spec(trials=1, epochs=50, hparams={"units": {"type": "discrete", "values": [8]},
                                                                          "batch_size": 1}))
    reported = timed_calls(client, "report_metrics")
    sent = recording(client)
    failed = timed_calls(client, "fail")
    agent = Agent(client, "test-cpu0", "test-host", poll_interval=0.2, heartbeat_interval=0.2, idle_exit=1)
    runner = threading.Thread(target=agent.run)
    runner.start()
    try:
        wait_until(lambda: len(reported) >= 2, timeout=120)
        epoch_seconds = reported[1] - reported[0]
        [trial] = trials(client, sweep["id"])
        cancelled = time.monotonic()
        client.cancel_sweep(sweep["id"])
    finally:
        runner.join(timeout=60)

    # Stopped mid-epoch: the epoch under way when the cancel came (begun at the second report) was never
    # finished or reported. No bound on the time itself: on a loaded machine a heartbeat can come late.
    assert len(reported) == 2, (failed[0] - cancelled, epoch_seconds)
    assert failed[0] >= cancelled
    assert [(name, report.error) for name, _, report in sent] == [("fail", "cancelled")]
    trial = client.get_trial(trial["id"])
    assert trial["state"] == "cancelled"
    trial_dir = tmp_path / "runs" / str(sweep["id"]) / f"trial-{trial['number']:04d}"
    assert not (trial_dir / "checkpoint").exists()
    accumulator = EventAccumulator(str(trial_dir))
    accumulator.Reload()
    end = metadata.parse_session_end_info_plugin_data(
        accumulator.SummaryMetadata(metadata.SESSION_END_INFO_TAG).plugin_data.content)
    # Ended as aborted (UNKNOWN with an end time where TensorBoard has no ABORTED), not as a success.
    assert end.status == getattr(api_pb2, "STATUS_ABORTED", api_pb2.STATUS_UNKNOWN) and end.end_time_secs > 0
    train = EventAccumulator(str(trial_dir / "train"))
    train.Reload()
    # The epoch under way at the cancel left no scalar: every epoch logged is one the server has.
    assert len(train.Tensors("epoch_loss")) == len(trial["history"])


def test_the_agent_applies_the_gpu_memory_limit_the_supervisor_set(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from sweeper.training import devices

    applied: list[int | None] = []
    monkeypatch.setattr(devices, "configure_gpus", applied.append)
    monkeypatch.setenv("SWEEPER_GPU_MEMORY_MB", "1234")
    client.create_sweep(digits_spec(trials=1, epochs=1))

    Agent(client, "test-cpu0", "test-host", poll_interval=0.2, heartbeat_interval=1.0, idle_exit=1).run()

    assert applied == [1234]


# -- the process ---------------------------------------------------------------------------------------

def test_a_second_signal_ends_the_agent_at_once_by_that_signal(server: Any, client: Client, tmp_path: Path) -> None:
    # Epochs of a second or more (a batch of one): the second signal must come before the epoch that the
    # first lets finish does; an epoch of 64-row batches took less than the 0.2 s between them.
    client.create_sweep(digits_spec(trials=1, epochs=200, hparams={"units": 8, "batch_size": 1}))
    state_file = tmp_path / "state.json"
    process = subprocess.Popen([sys.executable, "-m", "workers.agent", "--server", server.url,
                                "--worker-id", "box-cpu0", "--state-file", str(state_file),
                                "--heartbeat-interval", "0.5"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: state_file.exists(), timeout=60)
        trial_id = json.loads(state_file.read_text())["trial_id"]
        wait_until(lambda: client.get_trial(trial_id)["history"], timeout=60)
        process.send_signal(signal.SIGTERM)
        # Two signals before its handler runs would be one: the second goes once the first was taken.
        wait_until(lambda: not catches(process.pid, signal.SIGTERM), timeout=10)
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert process.wait(timeout=10) == -signal.SIGTERM
        assert time.monotonic() - started < 5
    finally:
        process.kill()
        stderr = process.communicate()[1]
    assert "SIGTERM: finishing the current epoch" in stderr and "exiting after" not in stderr
    # Left for the supervisor: the trial it held, and its checkpoint folder.
    assert json.loads(state_file.read_text())["trial_id"] == trial_id
    assert client.get_trial(trial_id)["state"] == "running"


def test_after_its_first_trial_the_agent_freezes_long_lived_objects_out_of_garbage_collection(
        client: Client) -> None:
    # A full collection with TensorFlow loaded walks every module's objects; frozen, it walks only
    # what later trials create, which keeps the gap between two trials short.
    import gc

    gc.unfreeze()
    frozen_during: list[int] = []
    trainer = scripted_trainer(epochs=1)

    def train(assignment: Assignment, on_epoch_end: EpochCallback, interrupt: Interrupt) -> Result:
        frozen_during.append(gc.get_freeze_count())
        return trainer(assignment, on_epoch_end, interrupt)

    client.create_sweep(digits_spec(trials=3, epochs=1))
    make_agent(client, run_trial=train).run()

    assert frozen_during[0] == 0
    assert frozen_during[1] > 0
    # Frozen once, after the first trial only: freezing again would add what the second trial made
    # (frozen objects freed since by their reference counts make the count drop a little).
    assert frozen_during[2] <= frozen_during[1]

"""The worker agent against a real server: a real Keras sweep, then the protocol's edge cases with
a scripted trainer in place of Keras.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sweeper.client import Client
from sweeper.messages import Assignment, ClaimRequest
from workers.agent import EXIT_SERVER_UNREACHABLE, Agent, FatalWorkerError
from workers_testing import digits_spec, free_port

EpochCallback = Callable[[int, dict[str, float]], str]


@dataclass(frozen=True)
class Result:
    """The shape of sweeper.training.runner.TrialResult, without importing TensorFlow."""

    metrics: dict[str, float]
    epochs_run: int
    stopped: bool


Trainer = Callable[[Assignment, EpochCallback], Result]


def scripted_trainer(epochs: int = 2, seconds_per_epoch: float = 0.0,
                     before_epoch: Callable[[int], None] | None = None) -> Trainer:
    def train(assignment: Assignment, on_epoch_end: EpochCallback) -> Result:
        metrics: dict[str, float] = {}
        for epoch in range(epochs):
            if before_epoch is not None:
                before_epoch(epoch)
            time.sleep(seconds_per_epoch)
            metrics = {"loss": 1.0 / (epoch + 1), "val_accuracy": 0.5 + epoch / 10}
            if on_epoch_end(epoch, dict(metrics)) != "continue":
                return Result(metrics, epoch + 1, stopped=True)
        return Result(metrics, epochs, stopped=False)
    return train


def make_agent(client: Client, **options: Any) -> Agent:
    defaults: dict[str, Any] = {"poll_interval": 0.1, "heartbeat_interval": 0.2, "idle_exit": 0.5}
    return Agent(client, "test-cpu0", "test-host", **{**defaults, **options})


def trials(client: Client, sweep_id: int) -> list[dict[str, Any]]:
    return sorted(client.list_trials(sweep_id)["data"], key=lambda trial: trial["id"])


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
        assert (tmp_path / "runs" / str(sweep["id"]) / str(trial["id"]) / "train").is_dir()


def test_a_trial_that_raises_is_failed_with_its_traceback_and_the_agent_goes_on(client: Client) -> None:
    sweep = client.create_sweep(digits_spec(trials=2))

    def explode(epoch: int) -> None:
        raise ValueError("exploding gradients")

    make_agent(client, run_trial=scripted_trainer(before_epoch=explode)).run()

    for trial in trials(client, sweep["id"]):
        assert trial["state"] == "failed"
        assert "Traceback (most recent call last)" in trial["error"]
        assert trial["error"].rstrip().endswith("ValueError: exploding gradients")


def test_heartbeats_are_sent_while_a_trial_trains(client: Client) -> None:
    client.create_sweep(digits_spec(trials=1))
    beats: list[str] = []
    real_heartbeat = client.heartbeat

    def counting_heartbeat(trial_id: int, worker_id: str) -> Any:
        beats.append(worker_id)
        return real_heartbeat(trial_id, worker_id)

    client.heartbeat = counting_heartbeat  # type: ignore[method-assign]
    make_agent(client, heartbeat_interval=0.1, run_trial=scripted_trainer(epochs=2, seconds_per_epoch=0.5)).run()

    assert len(beats) >= 5
    assert set(beats) == {"test-cpu0"}


def test_a_lost_lease_drops_the_trial_silently_and_the_agent_goes_on(
        start_server: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    server = start_server(lease_seconds=0.5)
    with Client(server.url, retries=1, backoff=0.05) as client:
        sweep = client.create_sweep(digits_spec(trials=1))
        thief: list[Assignment] = []
        thief_done = threading.Event()

        def thief_keeps_its_lease() -> None:
            while not thief_done.wait(0.1):
                client.heartbeat(thief[0].trial_id, "thief")

        def lease_expires_and_another_worker_claims(epoch: int) -> None:
            if epoch == 0:
                time.sleep(0.8)  # no heartbeat in time: the lease runs out
                stolen = client.claim(ClaimRequest(worker_id="thief", host="other-host"))
                assert stolen is not None
                thief.append(stolen)
                threading.Thread(target=thief_keeps_its_lease, daemon=True).start()

        agent = make_agent(client, heartbeat_interval=30, run_trial=scripted_trainer(
            epochs=3, before_epoch=lease_expires_and_another_worker_claims))
        try:
            agent.run()
            [trial] = trials(client, sweep["id"])
        finally:
            thief_done.set()

        assert thief[0].trial_id == trial["id"]
        assert trial["state"] == "running" and trial["worker_id"] == "thief"
        assert trial["metrics"] == {}  # the agent's late epoch report was refused, and nothing else was sent
        assert f"dropping trial {trial['id']}" in caplog.text


def test_shutdown_now_releases_the_running_trial_for_a_retry(client: Client) -> None:
    sweep = client.create_sweep(digits_spec(trials=1))
    agents: list[Agent] = []
    agent = make_agent(client, idle_exit=None, run_trial=scripted_trainer(
        epochs=5, before_epoch=lambda epoch: agents[0].shutdown(now=True)))  # as on a second SIGTERM
    agents.append(agent)

    agent.run()

    [trial] = trials(client, sweep["id"])
    assert trial["state"] == "pending"
    assert "shut down after 1 epoch" in trial["error"]


def test_shutdown_lets_the_running_trial_finish(client: Client) -> None:
    sweep = client.create_sweep(digits_spec(trials=2))
    agents: list[Agent] = []
    agent = make_agent(client, idle_exit=None, run_trial=scripted_trainer(
        epochs=2, before_epoch=lambda epoch: agents[0].shutdown()))  # as on a first SIGTERM
    agents.append(agent)

    agent.run()

    states = [trial["state"] for trial in trials(client, sweep["id"])]
    assert states.count("completed") == 1 and "running" not in states
    assert agent.trials_run == 1


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

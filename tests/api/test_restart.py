"""A server restarted on the same database file goes on with each sweep where it stopped."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from api_testing import Worker, create_sweep, get_sweep, random_spec
from fastapi.testclient import TestClient

from api.app import create_app
from api.server import RunningServer, start_in_thread
from api.settings import Settings
from sweeper import make_strategy, parse_spec
from sweeper.client import Client, LeaseLostError
from sweeper.messages import ClaimRequest, CompleteReport, HeartbeatRequest, MetricsReport


def test_restart_continues_with_the_next_index_none_skipped_or_repeated(settings):
    spec = random_spec(max_trials=6)
    before = TestClient(create_app(settings))
    with before:
        sweep = create_sweep(before, spec)
        worker = Worker(before, "w1")
        configs = []
        for _ in range(2):
            assignment = worker.claim()
            configs.append(assignment["hparams"])  # type: ignore[index]
            worker.complete(assignment["trial_id"], val_loss=0.5)  # type: ignore[index]
    # Leaving the `with` block shut the first app down and disposed of its engine.

    with TestClient(create_app(settings)) as after:
        worker = Worker(after, "w2")
        while (assignment := worker.claim()) is not None:
            configs.append(assignment["hparams"])
            worker.complete(assignment["trial_id"], val_loss=0.4)
        finished = get_sweep(after, sweep["id"])

    strategy = make_strategy(parse_spec(spec))
    assert configs == [strategy.config_at(index) for index in range(strategy.total)]
    assert finished["status"] == "completed" and finished["trial_counts"]["completed"] == 6


def test_a_trial_running_at_restart_is_still_held_by_its_worker(settings, make_client: Callable[..., TestClient]):
    first = make_client(settings)
    create_sweep(first, random_spec(max_trials=2))
    trial_id = Worker(first, "w1").claim()["trial_id"]  # type: ignore[index]

    second = make_client(settings)

    worker = Worker(second, "w1")
    assert worker.heartbeat(trial_id).status_code == 200
    assert worker.claim()["trial_id"] == trial_id  # type: ignore[index]


def test_a_running_trials_lease_survives_a_server_restart_and_it_completes_exactly_once(tmp_path: Path):
    # Real servers on one port and the workers' own client, which retries while the server is down.
    port = free_port()
    settings = Settings(host="127.0.0.1", port=port, database_url=f"sqlite:///{tmp_path / 'sweeper.db'}",
                        logdir=tmp_path / "runs", lease_seconds=5, reap_interval_seconds=0.05)
    first = start_in_thread(settings)
    with Client(first.url, retries=20, backoff=0.05, max_backoff=0.2) as client:
        sweep = client.create_sweep(random_spec(max_trials=1))
        assignment = client.claim(ClaimRequest(worker_id="w1", host="test-host"))
        assert assignment is not None
        trial_id, token = assignment.trial_id, assignment.lease_token
        client.report_metrics(trial_id, MetricsReport(worker_id="w1", lease_token=token, epoch=0,
                                                      metrics={"val_loss": 0.9}))

        first.stop()
        servers: list[RunningServer] = []
        second_start = threading.Timer(0.5, lambda: servers.append(start_in_thread(settings)))
        second_start.start()
        try:
            # Sent while the server is down: answered by the restarted one.
            assert client.heartbeat(trial_id, HeartbeatRequest(worker_id="w1", lease_token=token)).action == "continue"
            time.sleep(0.3)  # the new server's reaper makes a few passes
            assert client.report_metrics(trial_id, MetricsReport(worker_id="w1", lease_token=token, epoch=1,
                                                                 metrics={"val_loss": 0.5})).action == "continue"
            done = client.complete(trial_id, CompleteReport(worker_id="w1", lease_token=token,
                                                            metrics={"val_loss": 0.5}))

            assert done["state"] == "completed" and done["attempts"] == 1 and done["worker_id"] == "w1"
            # Sent again (its answer lost, say): the stored result, not a second completion.
            assert client.complete(trial_id, CompleteReport(worker_id="w1", lease_token=token,
                                                            metrics={"val_loss": 0.1})) == done
            with pytest.raises(LeaseLostError):
                client.heartbeat(trial_id, HeartbeatRequest(worker_id="w1", lease_token=token))
            assert client.claim(ClaimRequest(worker_id="w2", host="test-host")) is None
            finished = client.get_sweep(sweep["id"])
            assert finished["status"] == "completed" and finished["trial_counts"]["completed"] == 1
            assert finished["best_trial"]["metrics"] == {"val_loss": 0.5}
            assert [entry["epoch"] for entry in client.get_trial(trial_id)["history"]] == [0, 1]
        finally:
            second_start.join()
            for server in servers:
                server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

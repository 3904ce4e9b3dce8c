"""A server restarted on the same database file goes on with each sweep where it stopped."""

from __future__ import annotations

from collections.abc import Callable

from api_testing import Worker, create_sweep, get_sweep, random_spec
from fastapi.testclient import TestClient

from api.app import create_app
from sweeper import make_strategy, parse_spec


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

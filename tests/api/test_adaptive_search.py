"""Adaptive search over REST: tpe, cmaes, nsga2 (and gp where PyTorch is installed) propose each trial at claim
time from the results so far, on every domain the spec has, reproducibly from the seed, with no repeats in a
space of listed values, and the same after a server restart.

The objective is a fixed function of the hparams, reported by a test double of a worker, so a run depends on
nothing but the spec and the order of claims.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from api_testing import API, Worker, create_sweep, get_sweep, get_trial
from fastapi.testclient import TestClient

from sweeper import parse_spec
from sweeper._conditions import active_config

from api.search.samplers import gp_available

STRATEGIES = ["tpe", "cmaes", "nsga2", pytest.param("gp", marks=pytest.mark.skipif(
    gp_available() is not None, reason="the gp strategy needs PyTorch on the server: pip install 'sweeper[gp]'"))]

EVERY_DOMAIN: dict[str, Any] = {
    "learning_rate": {"type": "real_interval", "min": 1e-4, "max": 1e-1, "log": True},
    "dropout": {"type": "real_interval", "min": 0.0, "max": 0.5, "step": 0.1},
    "units": {"type": "int_interval", "min": 8, "max": 256, "log": True},
    "depth": {"type": "int_interval", "min": 1, "max": 4},
    "optimizer": {"type": "discrete", "values": ["adam", "sgd"]},
    "momentum": {"type": "real_interval", "min": 0.5, "max": 0.99, "when": {"optimizer": "sgd"}},
    "batch_size": 64,
}
"""log, step, int, discrete, fixed and a conditional hparam: the spec's every kind of domain."""


def adaptive_spec(strategy: str, max_trials: int = 14, hparams: dict[str, Any] | None = None,
                  **overrides: Any) -> dict[str, Any]:
    space = dict(hparams or EVERY_DOMAIN)
    if strategy == "gp" and hparams is None:
        space.pop("momentum")  # gp cannot search conditional hparams (refused at submit; see below)
    data: dict[str, Any] = {
        "name": f"{strategy}-sweep", "model": "mlp", "dataset": "digits",
        "objective": {"metric": "val_loss", "goal": "minimize"},
        "hparams": space,
        "search": {"strategy": strategy, "max_trials": max_trials, "seed": 3},
        "train": {"epochs": 3},
    }
    data.update(overrides)
    return data


def val_loss(hparams: dict[str, Any]) -> float:
    """A smooth function of the configuration with its best at learning_rate 1e-2, dropout 0.2, units 64."""
    loss = (math.log10(hparams["learning_rate"]) + 2) ** 2 + (hparams["dropout"] - 0.2) ** 2
    loss += (math.log2(hparams["units"]) - 6) ** 2 / 10 + hparams["depth"] / 10
    return loss + (0.3 if hparams["optimizer"] == "sgd" else 0.0)


def run_sequentially(client: TestClient, trials: int, objective: Callable[[dict[str, Any]], float] = val_loss
                     ) -> list[dict[str, Any]]:
    """Claim, report and complete `trials` trials one after another; their configurations in order."""
    worker = Worker(client, "w1")
    configs = []
    for _ in range(trials):
        assignment = worker.claim()
        assert assignment is not None
        hparams = assignment["hparams"]
        assert worker.complete(assignment["trial_id"], val_loss=objective(hparams), loss=1.0).status_code == 200
        configs.append(hparams)
    return configs


def in_space(spec: dict[str, Any], config: dict[str, Any]) -> bool:
    space = parse_spec(spec).search_space()
    return active_config(space, config) == config and set(config) <= set(space) and all(
        space[name].contains(value) for name, value in config.items()) and all(
        name in config for name in active_config(space, {**{n: d.grid(2)[0] for n, d in space.items()}, **config}))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_proposal_lies_in_the_space_with_its_conditions_honoured(client: TestClient, strategy: str):
    spec = adaptive_spec(strategy)
    create_sweep(client, spec)

    configs = run_sequentially(client, 14)

    assert all(in_space(spec, config) for config in configs), configs
    assert all(config["batch_size"] == 64 for config in configs)
    assert all(config["dropout"] in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5) for config in configs)  # decimals, as written
    assert all(isinstance(config["units"], int) and isinstance(config["depth"], int) for config in configs)
    if strategy != "gp":
        assert all(("momentum" in config) == (config["optimizer"] == "sgd") for config in configs)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_sequential_run_is_reproducible_from_the_seed(settings, make_client: Callable[..., TestClient],
                                                        other_database_url: str, strategy: str):
    first = make_client(settings)
    second = make_client(settings.model_copy(update={"database_url": other_database_url}))
    for client in (first, second):
        create_sweep(client, adaptive_spec(strategy))

    assert run_sequentially(first, 14) == run_sequentially(second, 14)


def test_another_seed_proposes_otherwise(settings, make_client: Callable[..., TestClient], other_database_url: str):
    first = make_client(settings)
    second = make_client(settings.model_copy(update={"database_url": other_database_url}))
    create_sweep(first, adaptive_spec("tpe"))
    create_sweep(second, adaptive_spec("tpe", search={"strategy": "tpe", "max_trials": 14, "seed": 4}))

    assert run_sequentially(first, 4) != run_sequentially(second, 4)


def test_tpe_learns_from_results_where_random_search_does_not(settings, make_client: Callable[..., TestClient],
                                                              other_database_url: str):
    # One hparam, its best at 1e-2: after its random start-up trials, TPE samples near the best ones so far.
    space = {"learning_rate": {"type": "real_interval", "min": 1e-5, "max": 1.0, "log": True}}
    loss: Callable[[dict[str, Any]], float] = lambda config: abs(math.log10(config["learning_rate"]) + 2)
    tpe = make_client(settings)
    create_sweep(tpe, adaptive_spec("tpe", max_trials=40, hparams=space))
    random = make_client(settings.model_copy(update={"database_url": other_database_url}))
    create_sweep(random, adaptive_spec("random", max_trials=40, hparams=space, search={
        "strategy": "random", "max_trials": 40, "seed": 3}))

    tpe_losses = sorted(loss(config) for config in run_sequentially(tpe, 40, loss)[20:])
    random_losses = sorted(loss(config) for config in run_sequentially(random, 40, loss)[20:])

    # The median of the last 20 proposals: TPE's sit much closer to the best than random search's.
    assert tpe_losses[10] < random_losses[10] / 2, (tpe_losses, random_losses)


@pytest.mark.parametrize("strategy", ["tpe", "nsga2"])
def test_a_space_of_listed_values_is_never_proposed_twice(client: TestClient, strategy: str):
    space = {"units": {"type": "discrete", "values": [8, 16, 32]},
             "optimizer": {"type": "discrete", "values": ["adam", "sgd"]},
             "depth": {"type": "discrete", "values": [1, 2]}, "batch_size": 64}
    sweep = create_sweep(client, adaptive_spec(strategy, max_trials=50, hparams=space))
    assert sweep["total_trials"] == 12  # all 12 configurations, then the space is exhausted

    configs = run_sequentially(client, 12, lambda config: config["units"] / config["depth"])

    assert len({tuple(sorted(config.items())) for config in configs}) == 12
    assert Worker(client, "w2").claim() is None
    assert get_sweep(client, sweep["id"])["status"] == "completed"


@pytest.mark.sqlite_only
def test_64_workers_claiming_at_once_get_64_different_configurations(start_server):
    server = start_server()
    space = {"units": {"type": "discrete", "values": list(range(8, 8 + 16))},
             "depth": {"type": "discrete", "values": [1, 2, 3, 4]}, "batch_size": 64}
    with httpx.Client(base_url=server.url) as http:
        response = http.post(f"{API}/sweeps", json=adaptive_spec("tpe", max_trials=64, hparams=space))
        assert response.status_code == 201, response.text
        # Finished trials first, so that the sampler has results to learn from, and the claims are TPE's own.
        worker = Worker(http, "warm-up")  # type: ignore[arg-type]
        for _ in range(12):
            assignment = worker.claim()
            assert assignment is not None
            worker.complete(assignment["trial_id"], val_loss=assignment["hparams"]["units"] / 10, loss=1.0)

    answers: list[dict[str, Any]] = []
    lock = threading.Lock()
    start = threading.Barrier(52)

    def claim(number: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            start.wait()
            response = http.post(f"{API}/trials/claim", json={"worker_id": f"w{number}", "host": "h"})
            assert response.status_code == 200, response.text
            with lock:
                answers.append(response.json())

    threads = [threading.Thread(target=claim, args=(number,)) for number in range(52)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    configs = {tuple(sorted(answer["hparams"].items())) for answer in answers}
    assert len(answers) == 52 and len(configs) == 52  # with the 12 finished: all 64 configurations, once each
    assert len({answer["trial_id"] for answer in answers}) == 52


def test_a_restarted_server_proposes_what_the_old_one_would_have(settings, make_client: Callable[..., TestClient],
                                                                 other_database_url: str):
    uninterrupted = make_client(settings.model_copy(update={"database_url": other_database_url}))
    create_sweep(uninterrupted, adaptive_spec("tpe"))
    expected = run_sequentially(uninterrupted, 14)

    before = make_client(settings)
    create_sweep(before, adaptive_spec("tpe"))
    first = run_sequentially(before, 8)
    before.__exit__(None, None, None)
    after = make_client(settings)

    assert first + run_sequentially(after, 6) == expected


def test_cmaes_keeps_its_state_in_sweepers_tables(client: TestClient):
    create_sweep(client, adaptive_spec("cmaes", max_trials=12))
    run_sequentially(client, 12)

    trials = client.get(f"{API}/sweeps/1/trials", params={"limit": 100}).json()["data"]
    assert len(trials) == 12  # the study lives in memory only: sweeper's own tables are the record


@pytest.mark.parametrize(("strategy", "hparams", "field", "problem"), [
    ("tpe", None, "max_trials", "is required for tpe search"),
    ("cmaes", {"optimizer": {"type": "discrete", "values": ["adam", "sgd"]}}, "strategy",
     "cmaes searches real_interval and int_interval hparams, and this space has none; use tpe"),
    ("gp", EVERY_DOMAIN, "strategy", "gp cannot search conditional hparams (those with a when: momentum); use tpe"),
])
def test_a_space_a_strategy_cannot_search_is_refused_naming_one_that_can(client: TestClient, strategy: str,
                                                                       hparams: dict[str, Any] | None, field: str,
                                                                       problem: str):
    spec = adaptive_spec(strategy, hparams=hparams)
    if field == "max_trials":
        spec["search"] = {"strategy": strategy}

    response = client.post(f"{API}/sweeps", json=spec)

    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "search", field] and error["msg"].startswith(problem)
    assert client.get(f"{API}/sweeps").json()["count"] == 0


def test_gp_is_refused_where_the_server_lacks_pytorch_naming_the_extra(client: TestClient, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # `import torch` raises ImportError, as uninstalled

    response = client.post(f"{API}/sweeps", json=adaptive_spec("gp"))

    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "search", "strategy"]
    assert "pip install 'sweeper[gp]'" in error["msg"] and "use tpe" in error["msg"]


def test_a_warm_started_sweep_begins_where_the_earlier_one_left_off(settings, make_client: Callable[..., TestClient],
                                                                     other_database_url: str):
    space = {"learning_rate": {"type": "real_interval", "min": 1e-5, "max": 1.0, "log": True}}
    loss: Callable[[dict[str, Any]], float] = lambda config: abs(math.log10(config["learning_rate"]) + 2)
    client = make_client(settings)
    earlier = create_sweep(client, adaptive_spec("tpe", max_trials=30, hparams=space))
    run_sequentially(client, 30, loss)
    warm = create_sweep(client, adaptive_spec("tpe", max_trials=10, hparams=space, search={
        "strategy": "tpe", "max_trials": 10, "seed": 3, "warm_start": [earlier["id"]]}))
    cold = make_client(settings.model_copy(update={"database_url": other_database_url}))
    create_sweep(cold, adaptive_spec("tpe", max_trials=10, hparams=space))

    warm_losses = sorted(loss(config) for config in run_sequentially(client, 10, loss))
    cold_losses = sorted(loss(config) for config in run_sequentially(cold, 10, loss))

    # The cold sweep's first 10 trials are TPE's random start-up; the warm one's are informed by 30 results.
    assert warm_losses[5] < 0.75 * cold_losses[5], (warm_losses, cold_losses)
    assert warm["spec"]["search"]["warm_start"] == [earlier["id"]]


@pytest.mark.parametrize(("warm_start", "hparams", "message"), [
    ([99], None, "sweep 99 does not exist"),
    ([1], {"units": {"type": "discrete", "values": [8, 16]}},
     "sweep 1 searched other hparams: warm starts need the same space, hparam for hparam"),
])
def test_a_warm_start_from_a_missing_or_different_sweep_is_a_422(client: TestClient, warm_start: list[int],
                                                                 hparams: dict[str, Any] | None, message: str):
    create_sweep(client, adaptive_spec("tpe"))
    spec = adaptive_spec("tpe", hparams=hparams, search={"strategy": "tpe", "max_trials": 5,
                                                         "warm_start": warm_start})

    response = client.post(f"{API}/sweeps", json=spec)

    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "search", "warm_start", 0] and error["msg"] == message


def test_random_search_refuses_a_warm_start_it_would_ignore(client: TestClient):
    response = client.post(f"{API}/sweeps", json=adaptive_spec("random", search={
        "strategy": "random", "max_trials": 5, "warm_start": [1]}))

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "search", "warm_start"]


@pytest.mark.sqlite_only
def test_sampling_and_stopping_decisions_run_off_the_event_loop(start_server, monkeypatch):
    # The event loop runs in the server's thread ("sweeper-api"); a proposal runs in the claim desk's thread
    # and a stopping decision in a worker thread of the pool, so a slow sampler never holds up other requests.
    from api.search import decisions

    threads: dict[str, set[str]] = {"propose": set(), "decide": set()}
    propose, decide = decisions.Search.propose, decisions.Search.decide

    def recording_propose(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        threads["propose"].add(threading.current_thread().name)
        return propose(self, *args, **kwargs)

    def recording_decide(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        threads["decide"].add(threading.current_thread().name)
        return decide(self, *args, **kwargs)

    monkeypatch.setattr(decisions.Search, "propose", recording_propose)
    monkeypatch.setattr(decisions.Search, "decide", recording_decide)
    server = start_server()
    with httpx.Client(base_url=server.url) as http:
        spec = adaptive_spec("tpe", max_trials=3, stopping={"rule": "median"})
        assert http.post(f"{API}/sweeps", json=spec).status_code == 201
        worker = Worker(http, "w")  # type: ignore[arg-type]
        for _ in range(3):
            trial_id = worker.claim_id()
            assert worker.report(trial_id, 0, val_loss=1.0).status_code == 200

    assert threads["propose"] == {"sweeper-claim-desk"}
    assert threads["decide"] and "sweeper-api" not in threads["decide"] | threads["propose"]


def test_a_rebuild_of_many_trials_reads_their_curves_by_sweep_and_decides_the_same(
        settings, make_client: Callable[..., TestClient], other_database_url: str, monkeypatch):
    # Past a few hundred trials, a rebuilt study reads the curves by sweep rather than by a list of ids; with
    # the threshold at 2, this small sweep takes that path after its restart.
    from api.search import history

    spec = adaptive_spec("tpe", max_trials=16, stopping={"rule": "median", "min_epochs": 1}, train={"epochs": 2})
    uninterrupted = make_client(settings.model_copy(update={"database_url": other_database_url}))
    create_sweep(uninterrupted, spec)
    expected = run_with_curves(uninterrupted, 16)
    assert any("prune" in answers for _, answers in expected)  # the median rule had something to decide

    before = make_client(settings)
    create_sweep(before, spec)
    first = run_with_curves(before, 10)
    before.__exit__(None, None, None)
    monkeypatch.setattr(history, "_LISTED_IDS", 2)
    after = make_client(settings)

    assert first + run_with_curves(after, 6) == expected


def run_with_curves(client: TestClient, trials: int) -> list[tuple[dict[str, Any], list[str]]]:
    """Like run_sequentially, with two epochs reported per trial: each configuration and the answers it got."""
    worker = Worker(client, "w1")
    runs = []
    for _ in range(trials):
        assignment = worker.claim()
        assert assignment is not None
        loss = val_loss(assignment["hparams"])
        answers = [worker.report(assignment["trial_id"], epoch, val_loss=loss + 1 - epoch, loss=1.0).json()["action"]
                   for epoch in range(2)]
        worker.complete(assignment["trial_id"], val_loss=loss, loss=1.0)
        runs.append((assignment["hparams"], answers))
    return runs

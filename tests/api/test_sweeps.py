"""Creating, listing and reading sweeps; bad specs answer 422 naming the field, unknown ids 404."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from api_testing import API, create_sweep, get_sweep, grid_spec, random_spec
from fastapi.testclient import TestClient

from sweeper import make_strategy, parse_spec
from sweeper.messages import TrialState


def test_create_sweep_answers_201_with_the_normalised_spec_and_no_trials_yet(client: TestClient):
    sweep = create_sweep(client, random_spec(max_trials=5))

    assert sweep["id"] >= 1
    assert sweep["name"] == "random"
    assert sweep["status"] == "running"
    assert sweep["spec"] == parse_spec(random_spec(max_trials=5)).to_json()
    assert sweep["spec"]["train"]["validation_split"] == 0.2  # defaults filled in
    assert sweep["total_trials"] == 5
    assert sweep["created_at"].endswith("Z")
    assert sweep["finished_at"] is None
    assert sweep["trial_counts"] == {state.value: 0 for state in TrialState}
    assert sweep["best_trial"] is None


def test_grid_sweep_total_is_the_number_of_combinations(client: TestClient):
    spec = grid_spec(values=3)
    spec["hparams"]["dropout"] = {"type": "real_interval", "min": 0.1, "max": 0.5}  # 2 grid points
    assert create_sweep(client, spec)["total_trials"] == 6


def test_create_sweep_writes_the_tensorboard_experiment_config_in_the_sweep_folder(client: TestClient, settings):
    sweep = create_sweep(client, grid_spec())

    folder = settings.logdir / str(sweep["id"])
    assert [path.name for path in folder.iterdir() if "tfevents" in path.name]


def test_get_sweep_returns_what_create_returned(client: TestClient):
    created = create_sweep(client, grid_spec())
    assert get_sweep(client, created["id"]) == created


def test_list_sweeps_pages_newest_first_and_counts_all(client: TestClient):
    ids = [create_sweep(client, grid_spec(name=f"s{i}"))["id"] for i in range(5)]

    page = client.get(f"{API}/sweeps", params={"limit": 2, "offset": 1}).json()

    assert page["count"] == 5
    assert [sweep["id"] for sweep in page["data"]] == ids[::-1][1:3]
    assert set(page["data"][0]) >= {"id", "name", "status", "spec", "total_trials", "trial_counts", "best_trial"}
    assert client.get(f"{API}/sweeps").json()["count"] == 5


def test_list_sweeps_is_empty_on_a_new_server(client: TestClient):
    assert client.get(f"{API}/sweeps").json() == {"data": [], "count": 0}


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 10_001}, {"offset": -1}, {"limit": "x"},
                                    {"offset": 2**70}])
def test_list_sweeps_rejects_bad_paging(client: TestClient, params: dict[str, Any]):
    response = client.get(f"{API}/sweeps", params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", next(iter(params))]


def test_unknown_sweep_is_404_naming_it(client: TestClient):
    for path in ("/sweeps/7", "/sweeps/7/trials"):
        response = client.get(API + path)
        assert response.status_code == 404
        assert response.json() == {"detail": "sweep 7 not found"}


def test_unknown_trial_is_404_naming_it(client: TestClient):
    response = client.get(f"{API}/trials/7")
    assert response.status_code == 404
    assert response.json() == {"detail": "trial 7 not found"}
    answer = client.post(f"{API}/trials/7/heartbeat", json={"worker_id": "w", "lease_token": 1})
    assert answer.status_code == 404
    assert answer.json() == {"detail": "trial 7 not found"}


def test_ids_too_large_for_the_database_are_just_not_found(client: TestClient):
    huge = 2**80
    assert client.get(f"{API}/sweeps/{huge}").status_code == 404
    assert client.get(f"{API}/trials/{huge}").status_code == 404
    assert client.post(f"{API}/trials/{huge}/complete", json={"worker_id": "w", "lease_token": 1, "metrics": {}}).status_code == 404


def _with(spec: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    target = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return spec


BAD_SPECS = {
    "bad interval": (
        _with(grid_spec(), ("hparams", "dropout"), {"type": "real_interval", "min": 0.5, "max": 0.1}),
        ["body", "hparams", "dropout"], "min (0.5) must be < max (0.1)"),
    "mixed discrete": (
        _with(grid_spec(), ("hparams", "units"), {"type": "discrete", "values": [1, "two"]}),
        ["body", "hparams", "units"], "must all be of one type"),
    "unknown model": (
        _with(grid_spec(), ("model",), "transformer-xxl"), ["body", "model"], "unknown model 'transformer-xxl'"),
    "unknown key": (
        _with(grid_spec(), ("search", "stratgy"), "grid"), ["body", "search", "stratgy"], "unknown field"),
    "unknown top-level key": (
        _with(grid_spec(), ("learning_rate",), 0.1), ["body", "learning_rate"], "unknown field"),
    "missing objective": (
        {key: value for key, value in grid_spec().items() if key != "objective"}, ["body", "objective"], "required"),
    "unknown domain type": (
        _with(grid_spec(), ("hparams", "units"), {"type": "choice", "values": [1]}),
        ["body", "hparams", "units"], "type must be one of"),
    "random over intervals without max_trials": (
        _with(random_spec(), ("search",), {"strategy": "random"}), ["body", "search", "max_trials"],
        "is required for random search over intervals"),
}


@pytest.mark.parametrize("spec, loc, message", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_bad_spec_is_422_naming_the_field_and_rule_and_creates_nothing(client: TestClient, settings, spec, loc,
                                                                        message):
    response = client.post(f"{API}/sweeps", json=spec)

    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert any(problem["loc"] == loc and message in problem["msg"] and problem["type"] == "value_error"
               for problem in problems), problems
    assert client.get(f"{API}/sweeps").json()["count"] == 0
    assert not settings.logdir.exists() or not any(settings.logdir.iterdir())


def test_bad_interval_detail_has_fastapis_exact_shape(client: TestClient):
    spec = _with(grid_spec(), ("hparams", "dropout"), {"type": "real_interval", "min": 0.5, "max": 0.1})
    response = client.post(f"{API}/sweeps", json=spec)
    assert response.json() == {"detail": [{"loc": ["body", "hparams", "dropout"],
                                           "msg": "min (0.5) must be < max (0.1)", "type": "value_error"}]}


@pytest.mark.parametrize("body", [[1, 2], "a spec", 42, None, True])
def test_a_body_that_is_not_an_object_is_422_at_the_body(client: TestClient, body: Any):
    response = client.post(f"{API}/sweeps", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"][0] == "body"
    assert "must be a mapping" in detail[0]["msg"] or "required" in detail[0]["msg"]


def test_malformed_json_is_422(client: TestClient):
    response = client.post(f"{API}/sweeps", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_a_sweep_larger_than_the_server_allows_is_422_at_max_trials(client: TestClient, any_hparams_model: str):
    spec = grid_spec(model=any_hparams_model)
    spec["hparams"] = {f"h{i}": {"type": "discrete", "values": list(range(10))} for i in range(30)}

    response = client.post(f"{API}/sweeps", json=spec)

    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "search", "max_trials"]
    assert "at most 1000000 trials" in problem["msg"]
    # Capped by max_trials, the same space is fine.
    spec["search"] = {"strategy": "grid", "max_trials": 10}
    assert create_sweep(client, spec)["total_trials"] == 10


NASTY_BODIES: dict[str, Any] = {
    "huge int max_trials": _with(random_spec(), ("search", "max_trials"), 10**40),
    "huge int seed": _with(random_spec(), ("search", "seed"), 10**40),
    "huge int interval": _with(grid_spec(), ("hparams", "depth"), {"type": "int_interval", "min": 1, "max": 10**40}),
    "huge int discrete": _with(grid_spec(), ("hparams", "units"), {"type": "discrete", "values": [1, 10**400]}),
    "huge int fixed": _with(grid_spec(), ("hparams", "batch_size"), 10**400),
    "nan interval": _with(grid_spec(), ("hparams", "dropout"), {"type": "real_interval", "min": math.nan, "max": 1}),
    "infinite interval": _with(grid_spec(), ("hparams", "dropout"),
                               {"type": "real_interval", "min": 0, "max": math.inf}),
    "nan discrete": _with(grid_spec(), ("hparams", "units"), {"type": "discrete", "values": [math.nan, 1.0]}),
    "nan fixed": _with(grid_spec(), ("hparams", "batch_size"), math.nan),
    "nan epochs": _with(grid_spec(), ("train", "epochs"), math.nan),
    "nested garbage": _with(grid_spec(), ("hparams",), [[{"type": None}]]),
    "hparam name not a word": _with(grid_spec(), ("hparams", "a b/../c"), 1),
    "deeply nested": _with(grid_spec(), ("objective",), {"metric": {"a": [[[[[{}]]]]]}}),
    "empty hparams": _with(grid_spec(), ("hparams",), {}),
    "empty discrete": _with(grid_spec(), ("hparams", "units"), {"type": "discrete", "values": []}),
    "bool grid points": _with(grid_spec(), ("search", "grid_points"), True),
}


@pytest.mark.parametrize("body", NASTY_BODIES.values(), ids=NASTY_BODIES.keys())
def test_no_spec_makes_the_server_fail(client: TestClient, body: Any):
    # Sent as raw JSON text, NaN and huge numbers included, the way a careless client would.
    response = client.post(f"{API}/sweeps", content=json.dumps(body).encode(),
                           headers={"content-type": "application/json"})

    assert response.status_code in (201, 422), response.text
    if response.status_code == 201:
        sweep = response.json()
        assert get_sweep(client, sweep["id"])["total_trials"] == sweep["total_trials"]


def test_list_trials_of_a_new_sweep_is_empty(client: TestClient):
    sweep = create_sweep(client, grid_spec())
    assert client.get(f"{API}/sweeps/{sweep['id']}/trials").json() == {"data": [], "count": 0}


def test_random_sweep_total_is_what_the_core_strategy_says(client: TestClient):
    spec = random_spec(max_trials=11)
    assert create_sweep(client, spec)["total_trials"] == make_strategy(parse_spec(spec)).total

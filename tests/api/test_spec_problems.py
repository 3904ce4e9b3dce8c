"""A posted spec's problems come back together, each at its field: a misspelled hparam among them."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from api_testing import API, Worker, grid_spec, random_spec
from fastapi.testclient import TestClient

from api.models import SweepRow, utcnow
from api.search import samplers
from sweeper import parse_spec
from sweeper.messages import SweepStatus

PATHS = ["/sweeps", "/sweeps/validate"]


def _problems(response: Any) -> dict[tuple[Any, ...], str]:
    assert response.status_code == 422, response.text
    return {tuple(problem["loc"]): problem["msg"] for problem in response.json()["detail"]}


@pytest.mark.parametrize("path", PATHS)
def test_an_hparam_the_model_does_not_read_is_422_at_its_name_listing_the_names_it_reads(client: TestClient,
                                                                                         path: str) -> None:
    spec = grid_spec()
    spec["hparams"]["unitz"] = {"type": "discrete", "values": [8, 16]}

    problems = _problems(client.post(f"{API}{path}", json=spec))

    assert list(problems) == [("body", "hparams", "unitz")]
    message = problems["body", "hparams", "unitz"]
    assert message.startswith("model mlp reads no hparam 'unitz'; did you mean units?")
    assert all(name in message for name in ("units", "depth", "dropout", "activation", "learning_rate"))
    assert client.get(f"{API}/sweeps").json()["count"] == 0


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("media_type", ["application/json", "application/yaml"])
def test_every_problem_of_a_spec_comes_back_in_one_answer(client: TestClient, path: str, media_type: str) -> None:
    spec = grid_spec(objective={"metric": "val_acc"}, train={"epochs": 0})
    spec["hparams"]["unitz"] = 8
    spec["hparams"]["dropout"] = {"type": "real_interval", "min": 0.5, "max": 0.1}
    body = yaml.safe_dump(spec) if media_type == "application/yaml" else None

    response = (client.post(f"{API}{path}", content=body, headers={"content-type": media_type}) if body
                else client.post(f"{API}{path}", json=spec))

    problems = _problems(response)
    assert sorted(problems) == [("body", "hparams", "dropout"), ("body", "hparams", "unitz"),
                                ("body", "objective", "metric"), ("body", "train", "epochs")]
    assert "'val_acc' is not a metric the trial logs" in problems["body", "objective", "metric"]
    # A YAML body's problems also say on which line their field was written, as `sweeper check` does.
    expected = {"loc", "msg", "type", "line"} if body else {"loc", "msg", "type"}
    assert all(set(problem) == expected for problem in response.json()["detail"])


@pytest.mark.parametrize("path", PATHS)
def test_a_yaml_bodys_problems_name_the_lines_their_fields_are_on(client: TestClient, path: str) -> None:
    body = """\
name: typo
model: mlp
dataset: digits
objective:
  metric: val_acc
hparams:
  units: {type: discrete, values: [16, 32]}
  unitz:
    type: discrete
    values: [8, 16]
  dropout: {type: real_interval, min: 0.5, max: 0.1}
search: {strategy: grid}
"""
    response = client.post(f"{API}{path}", content=body, headers={"content-type": "application/yaml"})

    assert response.status_code == 422, response.text
    lines = {tuple(problem["loc"][1:]): problem["line"] for problem in response.json()["detail"]}
    assert lines == {("objective", "metric"): 5, ("hparams", "unitz"): 8, ("hparams", "dropout"): 11}


@pytest.mark.parametrize("path", PATHS)
def test_the_servers_own_check_of_the_strategy_joins_the_specs_problems(client: TestClient, path: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(samplers, "gp_available", lambda: "gp needs PyTorch on the server, which is not installed")
    spec = grid_spec(search={"strategy": "gp", "max_trials": 4})
    spec["hparams"]["unitz"] = 8

    problems = _problems(client.post(f"{API}{path}", json=spec))

    assert sorted(problems) == [("body", "hparams", "unitz"), ("body", "search", "strategy")]
    assert problems["body", "search", "strategy"].startswith("gp needs PyTorch on the server")


def test_a_sweep_stored_with_an_hparam_its_model_does_not_read_still_runs_and_extends(client: TestClient) -> None:
    # As a sweep created before its model declared its hparams: what was accepted then is not taken back.
    spec = parse_spec(random_spec(name="older", max_trials=2)).to_json()
    spec["hparams"]["unitz"] = 8
    context = client.app.state.context  # type: ignore[attr-defined]
    with context.sessions() as session, session.begin():
        session.add(SweepRow(name="older", status=SweepStatus.running, spec=spec, total_trials=2, next_index=0,
                             created_at=utcnow()))
        session.flush()

    claimed = Worker(client, "w1").claim()

    assert claimed is not None and claimed["hparams"]["unitz"] == 8
    extended = client.post(f"{API}/sweeps/{claimed['sweep_id']}/extend", json={"max_trials": 4})
    assert extended.status_code == 200, extended.text
    assert extended.json()["total_trials"] == 4

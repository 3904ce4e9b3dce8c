"""A sweep's analysis over the API: parameter importance by Optuna's evaluators, and its trials exported as CSV
and JSON."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from typing import Any

import pytest
from api_testing import API, Worker, create_sweep, random_spec
from fastapi.testclient import TestClient

from api.search import importance as importance_module
from api.server import RunningServer
from api.settings import Settings
from sweeper.client import Client


def _objective(hparams: dict[str, Any]) -> float:
    """A val_loss that the learning rate alone decides (best at 10^-2.5); dropout and units only add noise."""
    return abs(math.log10(hparams["learning_rate"]) + 2.5) + 0.001 * hparams["dropout"]


def _run(client: TestClient, trials: int, **spec: Any) -> tuple[dict[str, Any], list[int]]:
    sweep = create_sweep(client, random_spec(max_trials=trials, **spec))
    worker = Worker(client, "w1")
    ids = []
    for _ in range(trials):
        assignment = worker.claim()
        assert assignment is not None
        response = worker.complete(assignment["trial_id"], val_loss=_objective(assignment["hparams"]), loss=0.5)
        assert response.status_code == 200, response.text
        ids.append(assignment["trial_id"])
    return sweep, ids


@pytest.mark.parametrize("evaluator", ["fanova", "ped_anova", "mean_decrease_impurity"])
def test_importance_ranks_the_hparam_that_decides_the_objective_first(client: TestClient, evaluator: str):
    sweep, _ = _run(client, 24)

    response = client.get(f"{API}/sweeps/{sweep['id']}/importance", params={"evaluator": evaluator})

    assert response.status_code == 200, response.text
    found = response.json()
    assert (found["metric"], found["goal"], found["evaluator"]) == ("val_loss", "minimize", evaluator)
    assert found["completed"] == found["judged"] == 24 and found["reason"] is None
    names = [entry["hparam"] for entry in found["importances"]]
    assert sorted(names) == ["dropout", "learning_rate", "units"]
    assert names[0] == "learning_rate" and found["importances"][0]["importance"] > 0.5
    assert math.isclose(sum(entry["importance"] for entry in found["importances"]), 1.0)


def test_importance_is_fanova_by_default_and_the_same_from_a_fresh_server(
        settings: Settings, make_client: Callable[..., TestClient]):
    first = make_client(settings)
    sweep, _ = _run(first, 12)
    answer = first.get(f"{API}/sweeps/{sweep['id']}/importance").json()
    assert answer["evaluator"] == "fanova"

    # Another app over the same database has no cached answer: it computes again, and agrees to the digit.
    again = make_client(settings).get(f"{API}/sweeps/{sweep['id']}/importance").json()

    assert again == answer


def test_importance_with_too_few_completed_trials_is_empty_with_its_reason(client: TestClient):
    sweep, _ = _run(client, 3)

    found = client.get(f"{API}/sweeps/{sweep['id']}/importance").json()

    assert found["importances"] == [] and found["completed"] == 3
    assert found["reason"] == ("parameter importance needs at least 4 completed trials with a value of val_loss; "
                               "the sweep has 3")


def test_importance_follows_new_completions_and_leaves_fixed_hparams_out(client: TestClient):
    spec = random_spec(max_trials=6)
    spec["hparams"]["batch_size"] = 64
    sweep = create_sweep(client, spec)
    worker = Worker(client, "w1")
    for done in range(6):
        assignment = worker.claim()
        assert assignment is not None
        worker.complete(assignment["trial_id"], val_loss=_objective(assignment["hparams"]))
        found = client.get(f"{API}/sweeps/{sweep['id']}/importance").json()
        assert found["completed"] == done + 1
        assert bool(found["importances"]) == (done + 1 >= 4)
    assert "batch_size" not in {entry["hparam"] for entry in found["importances"]}


def test_fanova_judges_a_seeded_sample_of_a_large_sweep(client: TestClient, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(importance_module, "FANOVA_MAX_TRIALS", 8)
    sweep, _ = _run(client, 14)

    found = client.get(f"{API}/sweeps/{sweep['id']}/importance").json()
    ped = client.get(f"{API}/sweeps/{sweep['id']}/importance", params={"evaluator": "ped_anova"}).json()

    assert (found["completed"], found["judged"]) == (14, 8)
    assert (ped["completed"], ped["judged"]) == (14, 14)


def test_importance_names_a_bad_evaluator_and_an_unknown_sweep(client: TestClient):
    sweep, _ = _run(client, 1)

    bad = client.get(f"{API}/sweeps/{sweep['id']}/importance", params={"evaluator": "shap"})
    missing = client.get(f"{API}/sweeps/99/importance")

    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "evaluator"]
    assert missing.status_code == 404 and missing.json() == {"detail": "sweep 99 not found"}


def test_trials_export_as_csv_one_row_per_trial_with_hparams_and_metrics_apart(client: TestClient):
    sweep, ids = _run(client, 3)
    worker = Worker(client, "w2")
    extra = client.post(f"{API}/sweeps/{sweep['id']}/extend", json={"max_trials": 4})
    assert extra.status_code == 200, extra.text
    failed = worker.claim_id()
    # An error that a spreadsheet would run as a formula is written so that it stays text.
    worker.fail(failed, error="=HYPERLINK(\"http://evil\")")

    response = client.get(f"{API}/sweeps/{sweep['id']}/trials.csv")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == f'attachment; filename="sweep-{sweep["id"]}-trials.csv"'
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0])[:10] == ["id", "number", "index", "state", "hparams.units", "hparams.dropout",
                                  "hparams.learning_rate", "metrics.val_loss", "metrics.loss", "attempts"]
    assert [int(row["id"]) for row in rows] == [*ids, failed]
    assert [row["number"] for row in rows] == ["1", "2", "3", "4"]
    assert [row["state"] for row in rows] == ["completed"] * 3 + ["failed"]
    trial = client.get(f"{API}/trials/{ids[0]}").json()
    assert float(rows[0]["hparams.learning_rate"]) == trial["hparams"]["learning_rate"]
    assert float(rows[0]["metrics.val_loss"]) == trial["metrics"]["val_loss"]
    assert rows[3]["metrics.val_loss"] == "" and rows[3]["error"] == "'=HYPERLINK(\"http://evil\")"

    only_failed = list(csv.DictReader(io.StringIO(
        client.get(f"{API}/sweeps/{sweep['id']}/trials.csv", params={"state": "failed"}).text)))
    assert [int(row["id"]) for row in only_failed] == [failed]


def test_trials_export_as_json_records_with_the_spec(client: TestClient):
    sweep, ids = _run(client, 2)

    response = client.get(f"{API}/sweeps/{sweep['id']}/trials.json")

    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == f'attachment; filename="sweep-{sweep["id"]}-trials.json"'
    document = response.json()
    assert document["sweep_id"] == sweep["id"] and document["spec"]["name"] == "random"
    assert [record["id"] for record in document["trials"]] == ids
    assert list(document["trials"][0]) == document["columns"]
    assert document["trials"][1]["metrics.val_loss"] == client.get(f"{API}/trials/{ids[1]}").json()["metrics"]["val_loss"]
    assert client.get(f"{API}/sweeps/99/trials.json").status_code == 404


def test_the_client_reads_importance_and_exports(server: RunningServer):
    with Client(server.url, retries=0) as client:
        sweep = client.create_sweep(random_spec(max_trials=2))
        assert client.importance(sweep["id"], evaluator="ped_anova")["reason"].startswith(
            "parameter importance needs at least 4")
        assert client.export_trials(sweep["id"]).splitlines()[0].startswith("id,number,index,state,hparams.units")
        assert '"trials":[]' in client.export_trials(sweep["id"], format="json")
        with pytest.raises(ValueError, match="format must be 'csv' or 'json'"):
            client.export_trials(sweep["id"], format="xlsx")


def test_a_one_value_hparam_cannot_matter_and_is_left_out(client: TestClient):
    spec = random_spec(max_trials=5)
    spec["hparams"]["units"] = {"type": "discrete", "values": [16]}
    sweep, _ = _run(client, 5, hparams=spec["hparams"])

    found = client.get(f"{API}/sweeps/{sweep['id']}/importance", params={"evaluator": "ped_anova"}).json()

    assert {entry["hparam"] for entry in found["importances"]} == {"dropout", "learning_rate"}

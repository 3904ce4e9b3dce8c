"""The client's list filters, sorting, best trial and objective curve, against a real server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_testing import grid_spec

from api.server import RunningServer
from sweeper.client import ApiError, Client, NotFoundError
from sweeper.messages import ClaimRequest, CompleteReport


@pytest.fixture
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.url, retries=0) as client:
        yield client


def _complete_next(client: Client, worker_id: str, score: float) -> int:
    assignment = client.claim(ClaimRequest(worker_id=worker_id, host="test"))
    assert assignment is not None
    client.complete(assignment.trial_id, CompleteReport(worker_id=worker_id, lease_token=assignment.lease_token,
                                                        metrics={"val_accuracy": score}))
    return assignment.trial_id


def test_best_trial_is_none_until_one_completes_and_unknown_sweeps_raise(client: Client):
    sweep = client.create_sweep(grid_spec(values=3))

    assert client.best_trial(sweep["id"]) is None
    with pytest.raises(NotFoundError, match="sweep 99 not found"):
        client.best_trial(99)

    ids = [_complete_next(client, "w1", score) for score in (0.4, 0.6, 0.5)]
    assert client.best_trial(sweep["id"])["id"] == ids[1]  # type: ignore[index]
    assert [point["value"] for point in client.objective(sweep["id"])["points"]] == [0.4, 0.6, 0.5]


def test_lists_take_their_filters_and_sorts(client: Client):
    first = client.create_sweep(grid_spec(name="first", values=3))
    second = client.create_sweep(grid_spec(name="second"))
    client.pause_sweep(second["id"])
    ids = [_complete_next(client, "w1", score) for score in (0.4, 0.6)]
    client.claim(ClaimRequest(worker_id="w2", host="test"))

    assert [s["name"] for s in client.list_sweeps(state="paused")["data"]] == ["second"]
    assert [t["id"] for t in client.list_trials(first["id"], sort="objective", state="completed")["data"]] == \
        ids[::-1]
    assert [t["index"] for t in client.list_trials(first["id"], sort="hparams.units", order="desc")["data"]] == \
        [2, 1, 0]
    assert [w["id"] for w in client.list_workers(state="busy")["data"]] == ["w2"]
    with pytest.raises(ApiError) as error:
        client.list_trials(first["id"], sort="hparams.nope")
    assert error.value.status_code == 422
    assert error.value.messages == ["sort: sweep 1 has no hparam 'nope'; its hparams: units, batch_size"]


def test_a_trial_is_read_by_its_sweep_and_number_and_a_missing_one_names_both(client: Client):
    first = client.create_sweep(grid_spec("first", values=1))
    _complete_next(client, "w1", 0.3)  # the first sweep's trial, so the second's ids are not its numbers
    second = client.create_sweep(grid_spec("second", values=3))
    ids = [_complete_next(client, "w1", score) for score in (0.4, 0.6)]

    trial = client.get_trial_by_number(second["id"], 2)

    assert (trial["id"], trial["number"], trial["metrics"]) == (ids[1], 2, {"val_accuracy": 0.6})
    assert client.get_trial_by_number(first["id"], 1)["number"] == 1
    with pytest.raises(NotFoundError, match=rf"sweep {second['id']} has no trial 3 \(its trials so far: 1 to 2\)"):
        client.get_trial_by_number(second["id"], 3)

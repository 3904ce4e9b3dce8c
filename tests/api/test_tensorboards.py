"""A sweep's TensorBoard, started on demand and reached through the app's proxy: real TensorBoard processes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from api.tensorboards import TensorBoards

# TensorBoard reads the sweep's log folder; which database holds the sweep makes no difference.
pytestmark = pytest.mark.sqlite_only

TEXT_SPEC: dict[str, Any] = {
    "name": "text-model", "model": "mlp", "dataset": "digits",
    "objective": {"metric": "val_accuracy", "goal": "maximize"},
    "hparams": {"units": {"type": "discrete", "values": [16, 32]},
                "dropout": {"type": "real_interval", "min": 0.0, "max": 0.3}},
    "search": {"strategy": "random", "max_trials": 2},
}
IMAGE_SPEC: dict[str, Any] = {
    **TEXT_SPEC, "name": "image-model",
    "hparams": {"depth": {"type": "int_interval", "min": 1, "max": 3},
                "optimizer": {"type": "discrete", "values": ["adam", "sgd"]}},
}


def create(client: TestClient, spec: dict[str, Any], headers: dict[str, str] | None = None) -> int:
    created = client.post("/api/v1/sweeps", json=spec, headers=headers)
    assert created.status_code == 201, created.text
    sweep_id: int = created.json()["id"]
    return sweep_id


def hparam_columns(client: TestClient, sweep_id: int) -> set[str]:
    """The HParams dashboard's columns, read through the proxy (TensorBoard's own API)."""
    deadline = time.monotonic() + 60
    while True:
        answer = client.post(f"/tensorboard/{sweep_id}/data/plugin/hparams/experiment", json={"experimentName": ""})
        assert answer.status_code == 200, answer.text
        infos = answer.json().get("hparamInfos", [])
        if infos or time.monotonic() > deadline:  # TensorBoard reads its logdir a moment after it starts
            return {info["name"] for info in infos}
        time.sleep(0.5)


def board(client: TestClient) -> TensorBoards:
    tensorboards: TensorBoards = client.app.state.tensorboards  # type: ignore[attr-defined]
    return tensorboards


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.e2e
def test_two_sweeps_each_show_only_their_own_hparams_and_a_second_open_reuses_the_process(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        text, image = create(client, TEXT_SPEC), create(client, IMAGE_SPEC)

        opened = client.post(f"/api/v1/sweeps/{text}/tensorboard")
        assert opened.status_code == 200, opened.text
        assert opened.json() == {"url": f"/tensorboard/{text}/"}
        assert client.post(f"/api/v1/sweeps/{image}/tensorboard").status_code == 200
        text_pid, image_pid = board(client).pid(text), board(client).pid(image)
        assert text_pid is not None and image_pid is not None and text_pid != image_pid

        # Each dashboard has its own sweep's columns only (log-scaled hparams would add log10_ ones).
        assert hparam_columns(client, text) == {"units", "dropout"}
        assert hparam_columns(client, image) == {"depth", "optimizer"}

        # Opening again, and every proxied request, reuse the running process.
        assert client.post(f"/api/v1/sweeps/{text}/tensorboard").json() == {"url": f"/tensorboard/{text}/"}
        page = client.get(f"/tensorboard/{text}/")
        assert page.status_code == 200 and "<tb-webapp>" in page.text
        # The query string is forwarded too: TensorBoard names the plugin it was asked for.
        missing = client.get(f"/tensorboard/{text}/data/plugin_entry.html", params={"name": "no-such-plugin"})
        assert missing.status_code == 404 and "no-such-plugin" in missing.text
        assert board(client).pid(text) == text_pid and board(client).pid(image) == image_pid
        # Without the trailing slash TensorBoard's relative links would break: redirected to it.
        redirect = client.get(f"/tensorboard/{text}", follow_redirects=False)
        assert redirect.status_code == 308 and redirect.headers["location"] == f"/tensorboard/{text}/"

    # The app's shutdown stops every TensorBoard it started.
    assert wait_for(lambda: gone(text_pid) and gone(image_pid), timeout=15)


@pytest.mark.e2e
def test_an_idle_tensorboard_is_stopped_and_the_next_request_starts_it_again(
        client_with: Callable[..., TestClient]) -> None:
    client = client_with(tensorboard_idle_seconds=1.0)
    sweep = create(client, TEXT_SPEC)
    assert client.post(f"/api/v1/sweeps/{sweep}/tensorboard").status_code == 200
    first = board(client).pid(sweep)
    assert first is not None

    assert wait_for(lambda: board(client).pid(sweep) is None and gone(first), timeout=15), "still running"

    environment = client.get(f"/tensorboard/{sweep}/data/environment")
    assert environment.status_code == 200, environment.text
    assert environment.json()["data_location"].endswith(os.path.join("runs", str(sweep)))
    second = board(client).pid(sweep)
    assert second is not None and second != first


def test_no_tensorboard_is_started_for_a_sweep_that_does_not_exist(client: TestClient) -> None:
    assert client.post("/api/v1/sweeps/41/tensorboard").status_code == 404
    proxied = client.get("/tensorboard/41/")
    assert proxied.status_code == 404 and "sweep 41" in proxied.json()["detail"]
    assert board(client).running() == []


def test_tensorboard_is_behind_the_admin_token(client_with: Callable[..., TestClient]) -> None:
    admin, worker = "a" * 32, "w" * 32
    client = client_with(admin_token=admin, worker_token=worker)
    sweep = create(client, TEXT_SPEC, headers={"Authorization": f"Bearer {admin}"})

    assert client.post(f"/api/v1/sweeps/{sweep}/tensorboard").status_code == 401
    assert client.get(f"/tensorboard/{sweep}/").status_code == 401
    assert client.get(f"/tensorboard/{sweep}/", headers={"Authorization": f"Bearer {worker}"}).status_code == 403
    assert board(client).running() == []

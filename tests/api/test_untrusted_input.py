"""What a request may name: registered models and datasets, and files under the workers' data root;
nothing from a request is imported, evaluated, or used as a path outside the data root.

Each attempt goes through the REST API of a real app (SQLite file and logdir in tmp_path) and must be
refused with a 4xx naming the field, leaving nothing behind: no sweep row, no folder under the logdir.
The core's own rules are tested in tests/sweeper (test_datasets, test_plugins, test_transfer); these
pin that the server applies them to every request.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.server import start_in_thread
from api.settings import Settings
from api_testing import API, create_sweep, grid_spec
from sweeper.client import Client
from workers.agent import Agent

MODEL_ATTEMPTS = ["os:system", "__import__('os').system('id')", "sweeper.training.models:build_mlp",
                  "builtins.eval", "../../mlp", "/usr/lib/python3/os.py", "mlp; rm -rf /", "mlp\x00.py"]

DATASET_ATTEMPTS = {
    "npz:../../x.npz": "must stay inside the data root",
    "npz:sets/../../x.npz": "must stay inside the data root",
    "npz:/etc/passwd": "must be relative to the data root, not absolute",
    "images:/etc": "must be relative to the data root, not absolute",
    "images:a/../../x": "must stay inside the data root",
    "npz:C:/x.npz": "must be relative to the data root, not absolute",
    "npz:..\\..\\x.npz": "must use '/' as its only separator",
    "/etc/passwd": "unknown dataset '/etc/passwd'",
    "os:system": "unknown dataset 'os:system'",
    "json:loads": "unknown dataset 'json:loads'",
    "file:///etc/passwd": "unknown dataset 'file:///etc/passwd'",
    "__import__('os')": "unknown dataset",
}


@pytest.fixture
def logdir(settings: Settings) -> Path:
    return settings.logdir


def assert_nothing_was_written(client: TestClient, logdir: Path) -> None:
    assert client.get(f"{API}/sweeps").json()["count"] == 0
    assert not logdir.exists() or not any(logdir.iterdir()), list(logdir.iterdir())


def refused_at(response: Any, *loc: str | int) -> str:
    """The message of the problem at body.<loc> in a 422; fails when there is none."""
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    messages = [problem["msg"] for problem in problems if problem["loc"] == ["body", *loc]]
    assert messages, problems
    return messages[0]


@pytest.mark.parametrize("route", ["sweeps", "sweeps/validate"])
@pytest.mark.parametrize("model", MODEL_ATTEMPTS)
def test_a_model_is_a_registered_name_never_code_or_a_path(client: TestClient, logdir: Path, route: str,
                                                           model: str) -> None:
    response = client.post(f"{API}/{route}", json=grid_spec(model=model))

    expected = "must not contain control characters" if "\x00" in model else \
        f"unknown model {model!r}; registered models: "
    assert refused_at(response, "model").startswith(expected)
    assert_nothing_was_written(client, logdir)


@pytest.mark.parametrize("route", ["sweeps", "sweeps/validate"])
@pytest.mark.parametrize(("dataset", "rule"), DATASET_ATTEMPTS.items(), ids=list(DATASET_ATTEMPTS))
def test_a_dataset_is_a_registered_name_or_a_path_inside_the_data_root(client: TestClient, logdir: Path, route: str,
                                                                      dataset: str, rule: str) -> None:
    response = client.post(f"{API}/{route}", json=grid_spec(dataset=dataset))

    assert rule in refused_at(response, "dataset")
    assert_nothing_was_written(client, logdir)


@pytest.mark.parametrize("weights", ["../weights/b0.weights.h5", "/etc/passwd",
                                     {"type": "discrete", "values": ["none", "../../x.weights.h5"]}])
def test_transfer_weights_are_a_file_inside_the_data_root(client: TestClient, logdir: Path, weights: Any) -> None:
    spec = grid_spec(model="transfer", hparams={"weights": weights, "batch_size": 16})

    message = refused_at(client.post(f"{API}/sweeps", json=spec), "hparams", "weights")

    assert "must stay inside the data root" in message or "must be relative to the data root" in message
    assert_nothing_was_written(client, logdir)


@pytest.mark.parametrize("field", ["logdir", "data_root", "plugins", "checkpoint_dir", "__class__"])
def test_a_spec_cannot_set_where_anything_is_read_or_written(client: TestClient, logdir: Path, field: str) -> None:
    response = client.post(f"{API}/sweeps", json={**grid_spec(), field: "/tmp/elsewhere"})

    assert "unknown field" in refused_at(response, field)
    assert_nothing_was_written(client, logdir)


def test_a_sweep_named_like_a_path_gets_a_folder_named_by_its_id(client: TestClient, logdir: Path,
                                                                 tmp_path: Path) -> None:
    sweep = create_sweep(client, grid_spec(name="../../../escaped"))

    # The name is only a label: the folder is the id's, inside the logdir.
    assert [folder.name for folder in logdir.iterdir()] == [str(sweep["id"])]
    assert not (logdir / sweep["name"]).resolve().exists()
    assert not list(tmp_path.glob("**/escaped"))


def test_a_worker_cannot_choose_where_its_trial_is_written(client: TestClient) -> None:
    create_sweep(client, grid_spec())

    sneaky = client.post(f"{API}/trials/claim", json={"worker_id": "w1", "host": "h", "logdir": "/tmp/elsewhere"})
    assignment = client.post(f"{API}/trials/claim", json={"worker_id": "../../w1", "host": "../h"}).json()

    assert "Extra inputs are not permitted" in refused_at(sneaky, "logdir")
    # A worker id is a label too: the trial's folder is the server's logdir / sweep id / trial number.
    assert Path(assignment["logdir"]).parts[-2:] == (str(assignment["sweep_id"]), f"trial-{assignment['number']:04d}")
    assert ".." not in Path(assignment["logdir"]).parts


# -- YAML bodies and huge documents ----------------------------------------------------------------

@pytest.mark.parametrize("document", [
    '!!python/object/apply:os.system ["touch {canary}"]',
    'name: !!python/object/apply:os.system ["touch {canary}"]\nmodel: mlp\n',
    "model: !!python/name:os.system\n",
    "model: !!python/object/new:subprocess.Popen [[touch, {canary}]]\n",
])
def test_a_yaml_body_cannot_run_code(client: TestClient, logdir: Path, tmp_path: Path, document: str) -> None:
    canary = tmp_path / "canary"

    response = client.post(f"{API}/sweeps", content=document.format(canary=canary).encode(),
                           headers={"content-type": "application/yaml"})

    assert "could not determine a constructor for the tag 'tag:yaml.org,2002:python/" in refused_at(response)
    assert not canary.exists()
    assert_nothing_was_written(client, logdir)


def test_a_yaml_body_whose_aliases_expand_a_billion_times_is_refused_quickly(client: TestClient,
                                                                             logdir: Path) -> None:
    names = "abcdefghi"
    lines = [f"a: &a [{', '.join(['lol'] * 10)}]"]
    for previous, name in zip(names, names[1:]):
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]")  # 10**9 strings in 700 bytes
    started = time.monotonic()

    response = client.post(f"{API}/sweeps", content="\n".join(lines).encode(),
                           headers={"content-type": "application/yaml"})

    assert "holds more than" in refused_at(response)
    assert time.monotonic() - started < 10
    assert_nothing_was_written(client, logdir)


@pytest.mark.parametrize("where", ["body", "hparams"])
@pytest.mark.parametrize("media_type", ["application/json", "application/yaml"])
def test_a_document_nested_deeper_than_the_parser_goes_is_refused(client: TestClient, logdir: Path,
                                                                  where: str, media_type: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    body = deep if where == "body" else json.dumps(grid_spec()).replace('"batch_size": 64', f'"batch_size": {deep}')

    response = client.post(f"{API}/sweeps", content=body.encode(), headers={"content-type": media_type})

    # JSON: 400 from FastAPI's parser (RecursionError); YAML: 422 at the body.
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["detail"]
    assert_nothing_was_written(client, logdir)


def test_a_deep_but_parsable_document_is_refused_at_its_field(client: TestClient, logdir: Path) -> None:
    spec = grid_spec()
    nested: Any = 1
    for _ in range(500):
        nested = {"a": nested}
    spec["hparams"]["units"] = nested

    assert refused_at(client.post(f"{API}/sweeps", json=spec), "hparams", "units")
    assert_nothing_was_written(client, logdir)


# -- files under the data root, seen from a worker -------------------------------------------------

@pytest.fixture
def thaw_garbage_collection() -> Iterator[None]:
    """The agent freezes what lives after its first trial (see workers.agent); thaw it after the test."""
    yield
    gc.unfreeze()


@pytest.mark.sqlite_only  # about the worker's data root, not the database
def test_a_symlink_under_the_data_root_that_leads_outside_fails_the_trial_on_the_worker(
        tmp_path: Path, settings: Settings, thaw_garbage_collection: None) -> None:
    # The server cannot see a worker's disk, so it accepts a well-formed file name; the worker resolves it
    # under its own data root and refuses a link out of it before reading anything.
    root, outside = tmp_path / "data", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    np.savez(outside / "secret.npz", x=np.zeros((20, 4), dtype="float32"), y=np.arange(20) % 2)
    (root / "leak.npz").symlink_to(outside / "secret.npz")
    (root / "folder").symlink_to(outside)
    server = start_in_thread(Settings(**{**settings.model_dump(), "port": 0}))
    try:
        with Client(server.url, retries=2, backoff=0.05) as client:
            names = ["npz:leak.npz", "npz:folder/secret.npz"]
            sweeps = [client.create_sweep(grid_spec(name=name, dataset=name, values=1)) for name in names]
            agent = Agent(client, "w1", "h", poll_interval=0.1, heartbeat_interval=1.0, idle_exit=1.0, data_root=root)

            agent.run()

            for name, sweep in zip(names, sweeps):
                (trial,) = client.list_trials(sweep["id"])["data"]
                assert trial["state"] == "failed"
                assert f"dataset path {name!r} must stay inside the data root" in trial["error"]
    finally:
        server.stop()


# -- text that ends up in a terminal -------------------------------------------------------------------

TERMINAL_TRICKS = ["a\nb", "tab\there", "\u001b[31mred", "bell\u0007", "back\u0008space", "nul\u0000"]


@pytest.mark.parametrize("name", TERMINAL_TRICKS)
def test_a_sweep_name_with_a_control_character_is_refused_naming_the_field(client: TestClient, name: str):
    # `sweeper status` prints names raw: an escape sequence in one would repaint the operator's terminal.
    answer = client.post(f"{API}/sweeps", json=grid_spec(name=name))

    assert answer.status_code == 422, answer.text
    [problem] = answer.json()["detail"]
    assert problem["loc"][-1] == "name" and "control character" in problem["msg"]
    assert client.get(f"{API}/sweeps").json()["count"] == 0


@pytest.mark.parametrize("field", ["worker_id", "host", "gpu"])
def test_a_worker_naming_itself_with_a_control_character_is_refused_naming_the_field(client: TestClient,
                                                                                     field: str):
    # `sweeper workers` prints these raw too.
    create_sweep(client, grid_spec(values=1))
    body = {"worker_id": "w1", "host": "box", "gpu": "0", field: "x\u001b[2J"}

    answer = client.post(f"{API}/trials/claim", json=body)

    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", field]


def test_printable_names_from_any_script_are_kept(client: TestClient):
    sweep = create_sweep(client, grid_spec(name="résumé — 実験 #3 (β=0.9)"))

    assert sweep["name"] == "résumé — 実験 #3 (β=0.9)"

"""A server whose logdir is a URL: a sweep's config is written there, and assignments name trial folders
and checkpoints under it, so workers on any host write to the same place.

The GCS bucket is an emulator reached by TensorFlow's own gs:// file system (see gcs_emulator).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from api_testing import Worker, create_sweep, grid_spec
from fastapi.testclient import TestClient
from gcs_emulator import gcs, unique_prefix  # noqa: F401 - the fixture
from pydantic import ValidationError

from api.settings import Settings
from sweeper.hparams_log import CONFIG_FILE


@pytest.fixture(params=["file URL", "GCS bucket"])
def url_logdir(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file URL":
        return f"file://{tmp_path / 'shared-runs'}"
    return request.getfixturevalue("gcs").url(unique_prefix(), "runs")


def test_a_url_logdir_gets_the_sweep_config_and_names_trial_folders_under_it(
        client_with: Callable[..., TestClient], url_logdir: str) -> None:
    import tensorflow as tf

    client = client_with(logdir=url_logdir + "/")
    sweep = create_sweep(client, grid_spec(values=1))

    assignment = Worker(client, "w1").claim()

    assert assignment is not None
    assert tf.io.gfile.exists(f"{url_logdir}/{sweep['id']}/{CONFIG_FILE}")
    trial_folder = f"{url_logdir}/{sweep['id']}/trial-0001"
    assert assignment["logdir"] == trial_folder
    assert assignment["checkpoint_dir"] == f"{trial_folder}/checkpoint"


@pytest.mark.parametrize("logdir", ["gs://bucket/runs", "s3://bucket/sweeps/", "file:///srv/runs"])
def test_a_url_logdir_setting_is_kept_as_written(logdir: str) -> None:
    assert Settings(logdir=logdir).logdir == logdir


def test_a_url_logdir_is_read_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPER_LOGDIR", "gs://bucket/runs")

    assert Settings().logdir == "gs://bucket/runs"


def test_a_local_logdir_setting_stays_a_folder(tmp_path: Path) -> None:
    assert Settings(logdir=str(tmp_path / "runs")).logdir == tmp_path / "runs"
    assert Settings(logdir="runs").logdir == Path("runs")
    assert not os.path.isabs(Settings().logdir)  # made absolute by the app, not by the settings


@pytest.mark.parametrize(("logdir", "rule"), [
    ("gs://", "logdir 'gs://' is a URL, so it must name a bucket or host after its scheme"),
    ("  ", "logdir must name a folder or a URL like gs://bucket/prefix, but it is empty"),
])
def test_a_logdir_that_names_nothing_is_refused_naming_the_rule(logdir: str, rule: str) -> None:
    with pytest.raises(ValidationError, match=rule):
        Settings(logdir=logdir)

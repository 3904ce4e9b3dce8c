"""The plugin example of docs/plugins.md, run for real: `sweeper run/serve/worker` with `--plugins`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
from e2e_processes import BIN, free_port, wait_until

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugins"
PLUGIN = "sweeper_example_plugin"


def plugin_env(**extra: str) -> dict[str, str]:
    """The environment docs/plugins.md asks for: the example's folder on PYTHONPATH."""
    path = os.pathsep.join(filter(None, [str(EXAMPLE), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200", "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def sweeper_run(spec: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "sweeper"), "run", str(spec), "--gpus", "none", "--database-url",
                           "sqlite:///run.db", "--logdir", "runs", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env=env or plugin_env())


def test_run_trains_the_example_plugins_model_on_its_dataset(tmp_path: Path) -> None:
    result = sweeper_run(EXAMPLE / "spirals.yaml", "--plugins", PLUGIN, "--cpu-workers", "2", cwd=tmp_path)

    log = (tmp_path / "runs" / "workers.log").read_text() if (tmp_path / "runs" / "workers.log").exists() else ""
    assert result.returncode == 0, result.stdout + result.stderr + log[-3000:]
    assert "Sweep 1 spirals completed: 4/4 trials finished (4 completed)" in result.stdout, log[-3000:]
    assert "Best trial" in result.stdout


def test_run_trains_on_the_example_plugins_own_train_validation_split(tmp_path: Path) -> None:
    # The dataset returns DataSplits (a tf.data train part, an array validation part): needs the runner's support.
    result = sweeper_run(EXAMPLE / "spirals_splits.yaml", "--plugins", PLUGIN, cwd=tmp_path)

    log = (tmp_path / "runs" / "workers.log").read_text() if (tmp_path / "runs" / "workers.log").exists() else ""
    assert result.returncode == 0, result.stdout + result.stderr + log[-3000:]
    assert "Sweep 1 spirals-splits completed: 2/2 trials finished (2 completed)" in result.stdout, log[-3000:]


def test_run_refuses_a_plugin_that_does_not_import_naming_it(tmp_path: Path) -> None:
    result = sweeper_run(EXAMPLE / "spirals.yaml", "--plugins", "no_such_plugin_module", cwd=tmp_path)

    assert result.returncode == 2
    assert "cannot import plugin module 'no_such_plugin_module'" in " ".join(result.stderr.split())
    assert not (tmp_path / "run.db").exists()  # stopped before anything started


def test_without_the_plugin_the_spec_names_an_unknown_model(tmp_path: Path) -> None:
    result = sweeper_run(EXAMPLE / "spirals.yaml", cwd=tmp_path)

    assert result.returncode == 2
    assert "unknown model 'spiral_mlp'" in " ".join(result.stderr.split())


def test_serve_and_worker_take_the_plugins_from_the_option_and_the_environment(tmp_path: Path, processes) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes.start("server", "env", f"PYTHONPATH={EXAMPLE}", str(BIN / "sweeper"), "serve", "--port", str(port),
                    "--database-url", f"sqlite:///{tmp_path / 'sweeper.db'}", "--logdir", str(tmp_path / "runs"),
                    "--plugins", PLUGIN)
    wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 60, "the server")
    spec = {"name": "rest-spirals", "model": "spiral_mlp", "dataset": "spirals",
            "objective": {"metric": "val_accuracy"}, "hparams": {"units": {"type": "discrete", "values": [8, 16]}},
            "search": {"strategy": "grid"}, "train": {"epochs": 2}}

    refused = httpx.post(f"{url}/api/v1/sweeps", json={**spec, "model": "sweeper_example_plugin:build_spiral_mlp"})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "model"]
    created = httpx.post(f"{url}/api/v1/sweeps", json=spec)
    assert created.status_code == 201, created.text

    processes.start("worker", "env", f"PYTHONPATH={EXAMPLE}", f"SWEEPER_PLUGINS={PLUGIN}", str(BIN / "sweeper"),
                    "worker", "--server", url, "--gpus", "none")
    sweep_id = created.json()["id"]
    sweep = wait_until(lambda: (s := httpx.get(f"{url}/api/v1/sweeps/{sweep_id}").json())["status"] != "running"
                       and s, 240, "the sweep to finish", interval=2)
    assert sweep["trial_counts"]["completed"] == 2, processes.logs()

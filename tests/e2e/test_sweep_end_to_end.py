"""A sweep submitted over REST is trained by worker processes and shows exactly in TensorBoard HParams."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess

import httpx
import pytest
from e2e_processes import BIN, free_port, wait_until

pytestmark = pytest.mark.e2e

SPEC = {
    "name": "e2e-digits",
    "model": "mlp",
    "dataset": "digits",
    "objective": {"metric": "val_accuracy", "goal": "maximize"},
    "hparams": {
        "units": {"type": "discrete", "values": [16, 32]},
        "dropout": {"type": "real_interval", "min": 0.0, "max": 0.3},
        "depth": {"type": "int_interval", "min": 1, "max": 2},
        "learning_rate": {"type": "real_interval", "min": 1.0e-3, "max": 1.0e-2, "log": True},
        "lr_schedule": {"type": "discrete", "values": ["constant", "cosine"]},
        "warmup_epochs": {"type": "int_interval", "min": 0, "max": 1, "when": {"lr_schedule": "cosine"}},
        "batch_size": 64,
    },
    "search": {"strategy": "random", "max_trials": 4, "seed": 3},  # seed 3: two constant, two cosine
    "train": {"epochs": 2, "validation_split": 0.2},
}
ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def test_sweep_over_rest_is_trained_by_workers_and_shown_in_tensorboard_hparams(tmp_path, processes):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logdir = tmp_path / "runs"
    processes.start("server", str(BIN / "sweeper"), "serve", "--port", str(port),
                    "--database-url", f"sqlite:///{tmp_path / 'sweeper.db'}", "--logdir", str(logdir))
    wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 60, "the server")
    processes.start("worker", str(BIN / "sweeper"), "worker", "--server", url, "--gpus", "none",
                    "--cpu-workers", "2")

    created = httpx.post(f"{url}/api/v1/sweeps", json=SPEC)
    assert created.status_code == 201, created.text
    sweep_id = created.json()["id"]
    sweep = wait_until(lambda: (s := httpx.get(f"{url}/api/v1/sweeps/{sweep_id}").json())["status"] != "running"
                       and s, 300, "the sweep to finish", interval=2)
    assert sweep["status"] == "completed", processes.logs()
    assert sweep["trial_counts"]["completed"] == 4
    trials = httpx.get(f"{url}/api/v1/sweeps/{sweep_id}/trials").json()["data"]
    assert len(trials) == 4 and all(t["state"] == "completed" and t["attempts"] == 1 for t in trials)
    history = httpx.get(f"{url}/api/v1/trials/{trials[0]['id']}").json()["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    best = max(trials, key=lambda t: t["metrics"]["val_accuracy"])
    assert sweep["best_trial"]["id"] == best["id"]

    # TensorBoard on that sweep's folder alone: its hparams plugin must show every trial exactly.
    tb_port = free_port()
    tensorboard = processes.start("tensorboard", str(BIN / "sweeper"), "tensorboard", str(sweep_id),
                                  "--logdir", str(logdir), "--port", str(tb_port))
    board = f"http://127.0.0.1:{tb_port}/data/plugin/hparams"

    def experiment():
        answer = httpx.post(f"{board}/experiment", json={"experimentName": ""}, timeout=10).json()
        return answer if answer.get("hparamInfos") else None

    def session_groups():
        body = {"experimentName": "", "allowedStatuses": ALL_STATUSES, "startIndex": 0, "sliceSize": 100}
        answer = httpx.post(f"{board}/session_groups", json=body, timeout=10).json()
        groups = answer.get("sessionGroups", [])
        return groups if len(groups) == 4 and all(g.get("metricValues") for g in groups) else None

    info = wait_until(experiment, 90, "TensorBoard's hparams experiment")
    domains = {h["name"]: h for h in info["hparamInfos"]}
    # Every hparam, the conditional one included, and a log10_ column for the log-scaled one.
    assert set(domains) == set(SPEC["hparams"]) | {"log10_learning_rate"}
    assert domains["log10_learning_rate"]["domainInterval"] == {"minValue": -3.0, "maxValue": -2.0}
    assert domains["units"]["domainDiscrete"] == [16, 32]
    assert domains["lr_schedule"]["domainDiscrete"] == ["constant", "cosine"]
    assert domains["dropout"]["domainInterval"] == {"minValue": 0.0, "maxValue": 0.3}
    assert domains["depth"]["domainInterval"] == {"minValue": 1, "maxValue": 2}
    assert domains["learning_rate"]["domainInterval"] == {"minValue": 0.001, "maxValue": 0.01}
    assert domains["batch_size"]["domainDiscrete"] == [64]
    metric_tags = {(m["name"].get("group", ""), m["name"]["tag"]) for m in info["metricInfos"]}
    assert {("", "val_accuracy"), ("validation", "epoch_accuracy"), ("train", "epoch_learning_rate")} <= metric_tags

    groups = {g["name"]: g for g in wait_until(session_groups, 90, "TensorBoard's session groups")}
    assert {t["hparams"]["lr_schedule"] for t in trials} == {"constant", "cosine"}
    # Each trial's session is named by its number, as its folder is.
    assert set(groups) == {f"trial-{t['number']:04d}" for t in trials}
    for trial in trials:
        group = groups[f"trial-{trial['number']:04d}"]
        # The session holds the trial's own hparams: warmup_epochs only where lr_schedule is cosine.
        assert ("warmup_epochs" in trial["hparams"]) == (trial["hparams"]["lr_schedule"] == "cosine")
        logged = {**trial["hparams"], "log10_learning_rate": pytest.approx(math.log10(trial["hparams"]["learning_rate"]))}
        assert group["hparams"] == logged, json.dumps(group)
        assert [s["status"] for s in group["sessions"]] == ["STATUS_SUCCESS"]
        objective = next(m for m in group["metricValues"] if m["name"]["tag"] == "val_accuracy"
                         and not m["name"].get("group"))
        assert objective["value"] == pytest.approx(trial["metrics"]["val_accuracy"], rel=1e-6)

    # `sweeper tensorboard` is TensorBoard itself: stopping it leaves no TensorBoard serving behind.
    tensorboard.terminate()
    tensorboard.wait(timeout=30)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{tb_port}/", timeout=5)


def sweeper_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "sweeper"), *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                            env={**os.environ, "COLUMNS": "200", "TF_CPP_MIN_LOG_LEVEL": "2"})
    return result


def test_cli_submit_waits_with_progress_and_status_shows_the_trials(tmp_path, processes):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes.start("server", str(BIN / "sweeper"), "serve", "--port", str(port),
                    "--database-url", f"sqlite:///{tmp_path / 'sweeper.db'}", "--logdir", str(tmp_path / "runs"))
    wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 60, "the server")
    processes.start("worker", str(BIN / "sweeper"), "worker", "--server", url, "--gpus", "none")
    spec = tmp_path / "grid.yaml"
    spec.write_text("name: cli-grid\nmodel: cnn\ndataset: digits\nobjective: {metric: val_loss, goal: minimize}\n"
                    "hparams:\n  filters: {type: discrete, values: [4, 8]}\n  learning_rate: 0.01\n"
                    "search: {strategy: grid}\ntrain: {epochs: 1}\n")

    submitted = sweeper_cli("submit", str(spec), "--server", url, "--wait", "--logdir", str(tmp_path / "runs"))
    assert submitted.returncode == 0, submitted.stderr + processes.logs()
    assert "Created sweep 1 cli-grid: grid of 2 configurations, 2 trials" in submitted.stdout
    assert "2/2" in submitted.stdout and "best val_loss=" in submitted.stdout
    assert "Sweep 1 cli-grid completed: 2/2 trials finished" in submitted.stdout
    assert f"sweeper tensorboard 1 --logdir {tmp_path / 'runs'}" in submitted.stdout

    listing = sweeper_cli("status", "--server", url)
    assert listing.returncode == 0 and "cli-grid" in listing.stdout and "completed" in listing.stdout
    trials = sweeper_cli("status", "1", "--server", url)
    assert trials.returncode == 0, trials.stderr
    rows = [line for line in trials.stdout.splitlines() if re.match(r"\s*[12] completed ", line)]
    assert len(rows) == 2 and any(" 4 " in row for row in rows) and any(" 8 " in row for row in rows)
    missing = sweeper_cli("status", "99", "--server", url)
    assert missing.returncode == 1 and "sweep 99 not found" in missing.stderr


def test_run_does_server_workers_and_sweep_in_one_command(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\nmodel: mlp\ndataset: digits\nobjective: {metric: val_accuracy}\n"
                    "hparams:\n  units: {type: discrete, values: [8, 16]}\n"
                    "  learning_rate: {type: real_interval, min: 0.001, max: 0.01, log: true}\n"
                    "search: {strategy: random, max_trials: 2, seed: 0}\ntrain: {epochs: 1}\n")
    result = sweeper_cli("run", str(spec), "--gpus", "none", "--database-url", "sqlite:///run.db",
                         "--logdir", "runs", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Sweep 1 tiny completed: 2/2 trials finished (2 completed)" in result.stdout
    assert "Best trial" in result.stdout and "Open TensorBoard: sweeper tensorboard 1 --logdir runs" in result.stdout
    trial_folders = sorted(p.name for p in (tmp_path / "runs" / "1").iterdir() if p.is_dir())
    assert trial_folders == ["trial-0001", "trial-0002"]
    assert "workers.agent" not in result.stdout + result.stderr  # worker lines go to their log, not the bar
    assert "sweep 1 trial 1 (id 1) finished" in (tmp_path / "runs" / "workers.log").read_text()


def test_run_trains_on_an_npz_file_under_the_data_root(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype("float32")
    (tmp_path / "lab" / "sets").mkdir(parents=True)
    np.savez(tmp_path / "lab" / "sets" / "blobs.npz", x=x, y=(x[:, 0] > 0).astype("int64"))
    spec = tmp_path / "npz.yaml"
    spec.write_text("name: blobs\nmodel: mlp\ndataset: npz:sets/blobs.npz\nobjective: {metric: val_accuracy}\n"
                    "hparams:\n  units: {type: discrete, values: [8]}\nsearch: {strategy: grid}\ntrain: {epochs: 2}\n")
    result = sweeper_cli("run", str(spec), "--gpus", "none", "--database-url", "sqlite:///run.db",
                         "--logdir", "runs", "--data-root", "lab", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Sweep 1 blobs completed: 1/1 trials finished (1 completed)" in result.stdout


def test_submit_with_a_broken_spec_names_the_file_and_line_and_creates_nothing(tmp_path):
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: x\nmodel: mlp\nhparams:\n  units: {type: discrete, values: [1, 2\n")
    result = subprocess.run([str(BIN / "sweeper"), "submit", str(spec), "--server", "http://127.0.0.1:9"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{spec}: line 5: invalid YAML" in " ".join(result.stderr.split())


def test_submit_with_a_bad_field_names_the_file_and_field(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\nmodel: mlp\ndataset: digits\nobjective: {metric: val_accuracy}\n"
                    "hparams:\n  dropout: {type: real_interval, min: 0.5, max: 0.1}\n")
    result = subprocess.run([str(BIN / "sweeper"), "submit", str(spec), "--server", "http://127.0.0.1:9"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "hparams.dropout: min (0.5) must be < max (0.1)" in " ".join(result.stderr.split())

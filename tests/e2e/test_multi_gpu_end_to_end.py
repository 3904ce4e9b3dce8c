"""`sweeper run` on a spec of 2 GPUs per trial, on a machine without GPUs: its CPU workers split into 2
devices train each trial on 2 replicas, and TensorBoard's HParams show the replicas and the global batch."""

from __future__ import annotations

import os
import subprocess

import pytest
from e2e_processes import BIN

pytestmark = pytest.mark.e2e

SPEC = ("name: pairs\nmodel: mlp\ndataset: digits\nobjective: {metric: val_accuracy}\n"
        "hparams:\n  units: {type: discrete, values: [8, 16]}\n  batch_size: 32\n"
        "search: {strategy: grid}\ntrain: {epochs: 1, gpus_per_trial: 2}\n")


def run_on_two_cpu_devices(tmp_path, spec_text: str, *options: str) -> subprocess.CompletedProcess[str]:
    """`sweeper run` on the spec, its CPU workers each split into 2 devices, in `tmp_path`."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text)
    return subprocess.run([str(BIN / "sweeper"), "run", str(spec), "--gpus", "none", "--cpu-devices", "2", *options,
                           "--database-url", "sqlite:///run.db", "--logdir", "runs"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={**os.environ, "COLUMNS": "200", "TF_CPP_MIN_LOG_LEVEL": "2"})


def test_run_trains_a_two_gpu_spec_on_cpu_workers_split_into_two_devices(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    result = run_on_two_cpu_devices(tmp_path, SPEC)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "on 1 CPU worker(s) of 2 devices" in result.stdout
    assert "Sweep 1 pairs completed: 2/2 trials finished (2 completed)" in result.stdout
    log = (tmp_path / "runs" / "workers.log").read_text()
    assert log.count("trains on 2 replicas") == 2 and "global batch size 64" in log
    accumulator = EventAccumulator(str(tmp_path / "runs" / "1" / "trial-0001"))
    accumulator.Reload()
    start = metadata.parse_session_start_info_plugin_data(
        accumulator.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content)
    assert (start.hparams["replicas"].number_value, start.hparams["global_batch_size"].number_value) == (2, 64)


PBT_SPEC = ("name: pairs-pbt\nmodel: mlp\ndataset: digits\nobjective: {metric: val_accuracy, goal: maximize}\n"
            "hparams:\n  learning_rate: {type: real_interval, min: 1.0e-4, max: 1.0e-1, log: true}\n"
            "  dropout: {type: real_interval, min: 0.0, max: 0.5}\n  units: 32\n  batch_size: 32\n"
            "search: {strategy: pbt, population: 4, interval_epochs: 2, mutable: [learning_rate, dropout], seed: 0}\n"
            "train: {epochs: 8, gpus_per_trial: 2}\n")


def test_pbt_members_of_two_replicas_exploit_inside_the_mirrored_strategy(tmp_path) -> None:
    # The model an exploit rebuilds in the running process, and the donor's weights and optimizer state loaded
    # into it, must be made in the strategy's scope like the first one.
    result = run_on_two_cpu_devices(tmp_path, PBT_SPEC, "--cpu-workers", "2")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Sweep 1 pairs-pbt completed: 4/4 trials finished (4 completed)" in result.stdout
    log = (tmp_path / "runs" / "workers.log").read_text()
    assert "exploits member" in log, log[-3000:]
    assert "trains on 1 replica" not in log and log.count("trains on 2 replicas") >= 4

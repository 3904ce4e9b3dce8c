"""Trials of 2 GPUs with MirroredStrategy, really run with 2 replicas: on a CPU split into 2 TensorFlow
devices (`SWEEPER_CPU_DEVICES`), in a process of their own, since TensorFlow takes the split only before
it first lists its devices. Also what the sweep's HParams config declares for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata, plugin_data_pb2

from sweeper import parse_spec
from sweeper._spec import Objective, TrainSettings
from sweeper.hparams_log import experiment_config_pb
from sweeper.messages import Assignment

ROOT = Path(__file__).resolve().parents[2]
BATCH_SIZE = 64

# Trains one assignment the way a CPU worker of 2 devices does: the CPU split before TensorFlow starts,
# then the runner. `stop_after` answers "stop" after that epoch (the trial is handed back, its checkpoint kept).
TRAIN = r'''
import json, sys
from sweeper.training import devices
devices.split_cpu(devices.cpu_devices_from_environment())
from sweeper.messages import Assignment
from sweeper.training.runner import run_trial

assignment = Assignment.model_validate_json(sys.argv[1])
stop_after = int(sys.argv[2])
result = run_trial(assignment, lambda epoch, metrics: "stop" if epoch == stop_after else "continue")
print(json.dumps({"replicas": result.replicas, "epochs_run": result.epochs_run, "resumed_from": result.resumed_from,
                  "stopped_by": result.stopped_by}))
'''


def _assignment(logdir: Path, gpus_per_trial: int, epochs: int = 2, lease_token: int = 1) -> Assignment:
    return Assignment(
        trial_id=3, sweep_id=1, number=3, hparams={"units": 8, "batch_size": BATCH_SIZE, "seed": 1},
        model="mlp", dataset="digits", objective=Objective(metric="val_accuracy"),
        train=TrainSettings(epochs=epochs, gpus_per_trial=gpus_per_trial), logdir=str(logdir / "trial-0003"),
        lease_expires_at=datetime.now(timezone.utc) + timedelta(minutes=5), lease_token=lease_token)


def _train(assignment: Assignment, cpu_devices: int, stop_after: int = -1) -> dict[str, Any]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "-1",
                   "SWEEPER_CPU_DEVICES": str(cpu_devices), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", TRAIN, assignment.model_dump_json(), str(stop_after)],
                          capture_output=True, text=True, env=environment, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _session_hparams(trial_dir: Path) -> dict[str, Any]:
    accumulator = EventAccumulator(str(trial_dir))
    accumulator.Reload()
    start = metadata.parse_session_start_info_plugin_data(
        accumulator.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content)
    return {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
            for name, value in start.hparams.items()}


@pytest.mark.training
def test_a_two_gpu_trial_trains_on_two_replicas_and_logs_the_global_batch(tmp_path: Path) -> None:
    assignment = _assignment(tmp_path, gpus_per_trial=2)

    result = _train(assignment, cpu_devices=2)

    assert (result["replicas"], result["epochs_run"]) == (2, 2)
    hparams = _session_hparams(tmp_path / "trial-0003")
    assert (hparams["replicas"], hparams["global_batch_size"], hparams["batch_size"]) == (2, 2 * BATCH_SIZE,
                                                                                           BATCH_SIZE)


@pytest.mark.training
def test_a_two_gpu_trial_on_a_worker_of_one_device_fails_for_a_retry_naming_the_option(tmp_path: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    script = TRAIN.replace("print(json.dumps(", "raise SystemExit(0)\nprint(json.dumps(")
    done = subprocess.run([sys.executable, "-c", script, _assignment(tmp_path, 2).model_dump_json(), "-1"],
                          capture_output=True, text=True, env=environment, timeout=300, check=False)

    assert done.returncode == 1
    assert "RetryableError: train.gpus_per_trial is 2, but this worker sees 1 CPU device(s); start workers with " \
           "--gpus-per-trial 2 (on a CPU, --cpu-devices 2)" in done.stderr


@pytest.mark.training
def test_a_two_replica_checkpoint_resumes_in_another_process_of_two_devices(tmp_path: Path) -> None:
    first = _train(_assignment(tmp_path, gpus_per_trial=2, epochs=3, lease_token=1), cpu_devices=2, stop_after=0)
    assert (first["replicas"], first["epochs_run"], first["stopped_by"]) == (2, 1, "stop")

    again = _train(_assignment(tmp_path, gpus_per_trial=2, epochs=3, lease_token=2), cpu_devices=2)

    assert (again["replicas"], again["resumed_from"], again["epochs_run"]) == (2, 1, 3)


@pytest.mark.training
def test_one_process_trains_two_gpu_trials_of_different_models_one_after_another(tmp_path: Path) -> None:
    # As a worker does: the second trial's all-reduces must not meet the first's in TensorFlow's runtime.
    script = TRAIN.replace("assignment = Assignment.model_validate_json(sys.argv[1])",
                           "first = Assignment.model_validate_json(sys.argv[1])\n"
                           "run_trial(first, lambda epoch, metrics: 'continue')\n"
                           "assignment = first.model_copy(update={'trial_id': 4, 'logdir': first.logdir + '-4', "
                           "'hparams': {**first.hparams, 'units': 16}})")
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "-1", "SWEEPER_CPU_DEVICES": "2",
                   "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", script, _assignment(tmp_path, 2, epochs=1).model_dump_json(), "-1"],
                          capture_output=True, text=True, env=environment, timeout=300, check=False)

    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["replicas"] == 2


def test_a_multi_gpu_sweeps_config_declares_replicas_and_the_global_batch_size() -> None:
    spec = parse_spec({"name": "pairs", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
                       "hparams": {"units": 8, "batch_size": {"type": "discrete", "values": [32, 64]}},
                       "search": {"strategy": "grid"}, "train": {"gpus_per_trial": 2}})

    value = experiment_config_pb(spec).value[0]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content).experiment
    infos = {info.name: info for info in experiment.hparam_infos}

    assert [item.number_value for item in infos["replicas"].domain_discrete.values] == [2]
    assert [item.number_value for item in infos["global_batch_size"].domain_discrete.values] == [64, 128]
    assert infos["global_batch_size"].differs and not infos["replicas"].differs


def test_a_one_gpu_sweeps_config_declares_neither() -> None:
    spec = parse_spec({"name": "one", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
                       "hparams": {"units": 8}, "search": {"strategy": "grid"}})

    value = experiment_config_pb(spec).value[0]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content).experiment
    assert not {"replicas", "global_batch_size"} & {info.name for info in experiment.hparam_infos}

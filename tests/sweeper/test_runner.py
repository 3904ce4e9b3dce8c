"""Real (tiny) Keras trials on digits, checked through the event files and TensorBoard's HParams plugin."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups, metadata

from sweeper import _registry, parse_spec
from sweeper._spec import Objective, TrainSettings
from sweeper.hparams_log import write_experiment
from sweeper.messages import Assignment
from sweeper.training.devices import configure_gpus, enable_memory_growth, memory_limit_from_environment
from sweeper.training.runner import TrialResult, run_trial

pytestmark = pytest.mark.training
EPOCHS = 3
BATCH_SIZE = 256
# 1,797 digits, 20% held out for validation: 1,437 training examples in 6 batches of 256.
STEPS_PER_EPOCH = math.ceil(math.floor(1797 * 0.8) / BATCH_SIZE)
BASE_HPARAMS = {"units": 16, "learning_rate": 0.01, "batch_size": BATCH_SIZE, "seed": 1}
# TensorBoard 2.21 has no STATUS_ABORTED; sweeper writes UNKNOWN, with an end, where it is missing.
ABORTED = getattr(api_pb2, "STATUS_ABORTED", api_pb2.STATUS_UNKNOWN)


def _assignment(logdir: Path, trial_id: int = 7, epochs: int = EPOCHS, model: str = "mlp",
                objective: str = "val_accuracy", lease_token: int = 1, **hparams: Any) -> Assignment:
    return Assignment(
        trial_id=trial_id, sweep_id=1, hparams={**BASE_HPARAMS, **hparams}, model=model, dataset="digits",
        objective=Objective(metric=objective), train=TrainSettings(epochs=epochs, validation_split=0.2),
        logdir=str(logdir / str(trial_id)), lease_expires_at=datetime.now(timezone.utc) + timedelta(minutes=5),
        lease_token=lease_token)


class _Recorder:
    """An `on_epoch_end` that records its calls and gives a fixed answer from a given epoch on."""

    def __init__(self, answer: str = "continue", from_epoch: int = 0):
        self.calls: list[tuple[int, dict[str, float]]] = []
        self._answer, self._from_epoch = answer, from_epoch

    def __call__(self, epoch: int, metrics: dict[str, float]) -> str:
        self.calls.append((epoch, metrics))
        return self._answer if epoch >= self._from_epoch else "continue"


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    return {tag: [(event.step, float(tf.make_ndarray(event.tensor_proto))) for event in accumulator.Tensors(tag)]
            for tag in accumulator.Tags()["tensors"] if not tag.startswith("_hparams_/")}


def _session(trial_dir: Path) -> tuple[api_pb2.SessionStartInfo | None, int | None]:
    accumulator = EventAccumulator(str(trial_dir))
    accumulator.Reload()
    tags = accumulator.Tags()["tensors"]
    start = (metadata.parse_session_start_info_plugin_data(
        accumulator.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content)
        if metadata.SESSION_START_INFO_TAG in tags else None)
    status = (metadata.parse_session_end_info_plugin_data(
        accumulator.SummaryMetadata(metadata.SESSION_END_INFO_TAG).plugin_data.content).status
        if metadata.SESSION_END_INFO_TAG in tags else None)
    return start, status


def _session_groups(sweep_dir: Path) -> list[api_pb2.SessionGroup]:
    """The session groups exactly as TensorBoard's HParams dashboard asks its backend for them."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(sweep_dir))
    multiplexer.Reload()
    tb_context = base_plugin.TBContext(logdir=str(sweep_dir), multiplexer=multiplexer,
                                       data_provider=data_provider.MultiplexerDataProvider(multiplexer, str(sweep_dir)))
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, allowed_statuses=[
        api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING, ABORTED])
    response = list_session_groups.Handler(context.RequestContext(), backend_context.Context(tb_context), "",
                                           request).run()
    return list(response.session_groups)


def _exponential(step: int) -> float:
    return 0.01 * 0.9 ** (step / STEPS_PER_EPOCH)


def _step(step: int) -> float:
    return 0.01 * 0.5 ** (step // STEPS_PER_EPOCH)


def _cosine(step: int) -> float:
    return 0.01 * 0.5 * (1 + math.cos(math.pi * step / (EPOCHS * STEPS_PER_EPOCH)))


@pytest.fixture(scope="module")
def finished_trial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrialResult, _Recorder]:
    sweep_dir = tmp_path_factory.mktemp("sweep")
    recorder = _Recorder()
    result = run_trial(_assignment(sweep_dir, lr_schedule="exponential"), recorder)
    return sweep_dir, result, recorder


def test_trial_runs_every_epoch_and_returns_the_last_epochs_metrics(finished_trial: Any) -> None:
    _, result, recorder = finished_trial

    assert (result.epochs_run, result.stopped, result.stopped_by) == (EPOCHS, False, None)
    assert set(result.metrics) == {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert all(isinstance(value, float) for value in result.metrics.values())
    assert result.metrics == recorder.calls[-1][1]
    assert (result.objective, result.objective_epoch) == (result.metrics["val_accuracy"], EPOCHS - 1)


def test_on_epoch_end_is_called_once_per_epoch_with_float_metrics(finished_trial: Any) -> None:
    _, _, recorder = finished_trial

    assert [epoch for epoch, _ in recorder.calls] == list(range(EPOCHS))
    assert all(isinstance(value, float) for _, metrics in recorder.calls for value in metrics.values())


def test_train_and_validation_scalars_have_one_value_per_epoch(finished_trial: Any) -> None:
    sweep_dir, result, _ = finished_trial
    train, validation = _scalars(sweep_dir / "7" / "train"), _scalars(sweep_dir / "7" / "validation")

    for tag in ("epoch_loss", "epoch_accuracy", "epoch_learning_rate"):
        assert [step for step, _ in train[tag]] == list(range(EPOCHS)), tag
    for tag in ("epoch_loss", "epoch_accuracy"):
        assert [step for step, _ in validation[tag]] == list(range(EPOCHS)), tag
    assert validation["epoch_accuracy"][-1][1] == pytest.approx(result.metrics["val_accuracy"])
    assert "epoch_learning_rate" not in validation


@pytest.mark.parametrize(("schedule", "formula", "extra"), [
    ("exponential", _exponential, {}),
    ("step", _step, {"lr_decay_factor": 0.5, "lr_step_epochs": 1}),
    ("cosine", _cosine, {}),
    ("constant", lambda step: 0.01, {}),
])
def test_logged_learning_rate_follows_the_schedule_at_each_epochs_end(
        tmp_path: Path, schedule: str, formula: Any, extra: dict[str, Any]) -> None:
    result = run_trial(_assignment(tmp_path, lr_schedule=schedule, **extra), _Recorder())

    logged = _scalars(tmp_path / "7" / "train")["epoch_learning_rate"]
    # Keras logs the schedule at the optimizer's step count after the epoch: the rate of the next step.
    expected = [formula(STEPS_PER_EPOCH * (epoch + 1)) for epoch in range(EPOCHS)]
    assert [value for _, value in logged] == pytest.approx(expected, rel=1e-5, abs=1e-8)
    assert result.metrics["learning_rate"] == pytest.approx(expected[-1], rel=1e-5, abs=1e-8)


def test_logged_learning_rate_warms_up_then_follows_the_cosine(tmp_path: Path) -> None:
    run_trial(_assignment(tmp_path, lr_schedule="cosine", warmup_epochs=1), _Recorder())

    def warmup_then_cosine(step: int) -> float:
        warmup, decay = STEPS_PER_EPOCH, (EPOCHS - 1) * STEPS_PER_EPOCH
        if step < warmup:
            return 0.01 * step / warmup
        return 0.01 * 0.5 * (1 + math.cos(math.pi * min(step - warmup, decay) / decay))

    logged = _scalars(tmp_path / "7" / "train")["epoch_learning_rate"]
    # Logged after each epoch: the end of the warmup (the full rate), halfway down the cosine, its end.
    expected = [warmup_then_cosine(STEPS_PER_EPOCH * (epoch + 1)) for epoch in range(EPOCHS)]
    assert expected == pytest.approx([0.01, 0.005, 0.0], abs=1e-12)
    assert [value for _, value in logged] == pytest.approx(expected, rel=1e-5, abs=1e-8)


def test_trial_folder_holds_session_start_objective_and_success(finished_trial: Any) -> None:
    sweep_dir, result, _ = finished_trial

    start, status = _session(sweep_dir / "7")

    assert start.group_name == "7"
    assert {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()} == \
        {**BASE_HPARAMS, "lr_schedule": "exponential"}
    assert status == api_pb2.STATUS_SUCCESS
    assert _scalars(sweep_dir / "7") == {"val_accuracy": [(EPOCHS - 1, pytest.approx(result.metrics["val_accuracy"]))]}


def test_hparams_dashboard_shows_the_trial_with_its_status_and_metrics(finished_trial: Any) -> None:
    sweep_dir, result, _ = finished_trial
    spec = parse_spec({"name": "digits", "model": "mlp", "dataset": "digits",
                       "objective": {"metric": "val_accuracy"}, "search": {"max_trials": 2},
                       "hparams": {"units": {"type": "discrete", "values": [16, 32]},
                                   "learning_rate": {"type": "real_interval", "min": 0.001, "max": 0.1},
                                   "lr_schedule": "exponential", "batch_size": BATCH_SIZE, "seed": 1}})
    write_experiment(sweep_dir, spec)

    (group,) = _session_groups(sweep_dir)

    assert group.name == "7"
    assert [session.status for session in group.sessions] == [api_pb2.STATUS_SUCCESS]
    metrics = {(value.name.group, value.name.tag): value.value for value in group.metric_values}
    assert metrics[("", "val_accuracy")] == pytest.approx(result.metrics["val_accuracy"])
    assert metrics[("validation", "epoch_loss")] == pytest.approx(result.metrics["val_loss"])
    assert metrics[("train", "epoch_learning_rate")] == pytest.approx(result.metrics["learning_rate"])


@pytest.mark.parametrize(("answer", "status"), [("stop", None), ("prune", ABORTED), ("cancel", ABORTED)])
def test_stop_prune_or_cancel_answer_ends_training_after_that_epoch(tmp_path: Path, answer: str,
                                                                    status: int | None) -> None:
    recorder = _Recorder(answer, from_epoch=0)

    result = run_trial(_assignment(tmp_path, epochs=5), recorder)

    assert (result.epochs_run, result.stopped, result.stopped_by) == (1, True, answer)
    assert [epoch for epoch, _ in recorder.calls] == [0]
    assert [step for step, _ in _scalars(tmp_path / "7" / "train")["epoch_loss"]] == [0]
    # "stop" hands the trial back for a retry: no session end, which TensorBoard would keep for good.
    assert _session(tmp_path / "7")[1] == status


def test_pruned_trial_shows_in_the_dashboard_as_ended_but_not_successful(tmp_path: Path) -> None:
    run_trial(_assignment(tmp_path, epochs=3), _Recorder("prune", from_epoch=1))

    (group,) = _session_groups(tmp_path)

    assert [session.status for session in group.sessions] == [ABORTED]
    assert group.sessions[0].end_time_secs > 0


def test_session_start_is_on_disk_while_training_and_its_end_only_after(tmp_path: Path) -> None:
    seen: list[tuple[str | None, int | None]] = []

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> str:
        start, status = _session(tmp_path / "7")
        seen.append((start.group_name if start is not None else None, status))
        return "continue"

    run_trial(_assignment(tmp_path, epochs=2), on_epoch_end)

    # A running TensorBoard lists the trial from its first epoch on, with no end until the real one.
    assert seen == [("7", None), ("7", None)]
    assert _session(tmp_path / "7")[1] == api_pb2.STATUS_SUCCESS


def test_log_scaled_hparams_get_a_log10_column_in_the_session(tmp_path: Path) -> None:
    assignment = _assignment(tmp_path, epochs=1).model_copy(update={"log_scaled": ["learning_rate", "absent"]})

    run_trial(assignment, _Recorder())

    start, _ = _session(tmp_path / "7")
    hparams = {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
    assert hparams == {**BASE_HPARAMS, "log10_learning_rate": pytest.approx(-2.0)}


def test_model_that_raises_ends_the_session_as_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(hparams: dict[str, Any], info: Any) -> Any:
        raise RuntimeError("no such layer")

    monkeypatch.setattr(_registry, "models", _registry.Registry("model", {"broken": broken}))
    recorder = _Recorder()

    with pytest.raises(RuntimeError, match="no such layer"):
        run_trial(_assignment(tmp_path, model="broken"), recorder)

    start, status = _session(tmp_path / "7")
    assert start.group_name == "7"
    assert status == api_pb2.STATUS_FAILURE
    assert recorder.calls == []


def test_unknown_objective_metric_fails_after_the_first_epoch_naming_the_metrics(tmp_path: Path) -> None:
    recorder = _Recorder()

    with pytest.raises(ValueError, match=r"objective metric 'val_f1' is not among the trial's metrics; "
                                         r"available: accuracy, learning_rate, loss, val_accuracy, val_loss"):
        run_trial(_assignment(tmp_path, epochs=5, objective="val_f1"), recorder)

    assert recorder.calls == []
    assert _session(tmp_path / "7")[1] == api_pb2.STATUS_FAILURE


def test_same_seed_gives_the_same_metrics(tmp_path: Path) -> None:
    first = run_trial(_assignment(tmp_path, trial_id=1, epochs=1), _Recorder())
    second = run_trial(_assignment(tmp_path, trial_id=2, epochs=1), _Recorder())

    assert first.metrics == second.metrics


def test_cnn_trial_runs_on_digits(tmp_path: Path) -> None:
    result = run_trial(_assignment(tmp_path, model="cnn", epochs=1, filters=4, blocks=2, dense_units=8),
                       _Recorder())

    assert result.epochs_run == 1
    assert np.isfinite(result.metrics["val_loss"])


def test_cnn_with_batch_norm_trains_on_digits(tmp_path: Path) -> None:
    result = run_trial(_assignment(tmp_path, model="cnn", epochs=1, filters=4, blocks=2, dense_units=8,
                                   batch_norm=True), _Recorder())

    assert np.isfinite(result.metrics["val_loss"])


def test_memory_growth_and_limits_are_no_ops_without_a_gpu() -> None:
    enable_memory_growth()
    configure_gpus(None)
    configure_gpus(2048)


def test_a_memory_limit_gives_the_gpu_one_logical_device_of_that_size_instead_of_growth(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # As on a worker that shares its GPU: TensorFlow sees one physical GPU.
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    monkeypatch.setattr(tf.config, "set_logical_device_configuration",
                        lambda device, configs: calls.append(("limit", device, [c.memory_limit for c in configs])))
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth",
                        lambda device, enable: calls.append(("growth", device, enable)))

    configure_gpus(2048)
    configure_gpus(None)

    assert calls == [("limit", "GPU:0", [2048]), ("growth", "GPU:0", True)]


@pytest.mark.parametrize(("value", "limit"), [(None, None), ("", None), (" 1536 ", 1536)])
def test_the_memory_limit_comes_from_the_supervisors_variable(value: str | None, limit: int | None) -> None:
    environ = {} if value is None else {"SWEEPER_GPU_MEMORY_MB": value}
    assert memory_limit_from_environment(environ) == limit


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1.5"])
def test_a_memory_limit_that_is_not_a_positive_whole_number_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=rf"SWEEPER_GPU_MEMORY_MB must be a whole number of MB > 0, but got '{value}'"):
        memory_limit_from_environment({"SWEEPER_GPU_MEMORY_MB": value})


def test_retried_trial_replaces_the_earlier_attempts_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _Recorder("prune", from_epoch=1)
    run_trial(_assignment(tmp_path, epochs=3), first)
    with monkeypatch.context() as patch:
        patch.setattr(_registry, "models", _registry.Registry("model", {"mlp": _raise}))
        with pytest.raises(RuntimeError):
            run_trial(_assignment(tmp_path, epochs=3), _Recorder())

    result = run_trial(_assignment(tmp_path, epochs=1), _Recorder())

    (group,) = _session_groups(tmp_path)
    assert [session.status for session in group.sessions] == [api_pb2.STATUS_SUCCESS]
    assert _session(tmp_path / "7")[1] == api_pb2.STATUS_SUCCESS
    assert _scalars(tmp_path / "7") == {"val_accuracy": [(0, pytest.approx(result.metrics["val_accuracy"]))]}
    assert [step for step, _ in _scalars(tmp_path / "7" / "train")["epoch_loss"]] == [0]


def _raise(hparams: dict[str, Any], info: Any) -> Any:
    raise RuntimeError("broken on this attempt")


def test_extra_callbacks_see_every_training_batch(tmp_path: Path) -> None:
    class BatchCounter(keras.callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            BatchCounter.batches += 1

    result = run_trial(_assignment(tmp_path, epochs=2, batch_size=64), _Recorder(), callbacks=[BatchCounter()])

    # 1,797 digits, 20% held out: 1,437 training examples in batches of 64.
    assert result.epochs_run == 2 and BatchCounter.batches == 2 * math.ceil(1437 / 64)

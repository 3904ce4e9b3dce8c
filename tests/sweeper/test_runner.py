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
from sweeper.messages import Action, Assignment
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
# The mlp of BASE_HPARAMS on digits: 64 pixels -> Dense(16) -> Dense(10), each with its biases.
MLP_PARAMS = 64 * 16 + 16 + 16 * 10 + 10


def _assignment(logdir: Path, trial_id: int = 7, epochs: int = EPOCHS, model: str = "mlp",
                objective: str = "val_accuracy", lease_token: int = 1, **hparams: Any) -> Assignment:
    return Assignment(
        trial_id=trial_id, sweep_id=1, number=trial_id, hparams={**BASE_HPARAMS, **hparams}, model=model,
        dataset="digits",
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


def _session_groups(sweep_dir: Path, col_params: list[api_pb2.ColParams] = ()) -> list[api_pb2.SessionGroup]:
    """The session groups exactly as TensorBoard's HParams dashboard asks its backend for them, filtered
    and sorted by `col_params` as the dashboard's column controls ask."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(sweep_dir))
    multiplexer.Reload()
    tb_context = base_plugin.TBContext(logdir=str(sweep_dir), multiplexer=multiplexer,
                                       data_provider=data_provider.MultiplexerDataProvider(multiplexer, str(sweep_dir)))
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=100, col_params=col_params, allowed_statuses=[
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
    assert set(result.metrics) == {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "num_params"}
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
    assert _scalars(sweep_dir / "7") == {"val_accuracy": [(EPOCHS - 1, pytest.approx(result.metrics["val_accuracy"]))],
                                         "num_params": [(EPOCHS - 1, result.metrics["num_params"])]}


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
    assert metrics[("", "num_params")] == result.metrics["num_params"]
    assert ("", "pruned_at_epoch") not in metrics


@pytest.mark.parametrize(("answer", "status", "pruned_at_epoch"), [
    ("stop", None, None), ("prune", ABORTED, [(0, 1.0)]), ("cancel", ABORTED, None)])
def test_stop_prune_or_cancel_answer_ends_training_after_that_epoch(tmp_path: Path, answer: str, status: int | None,
                                                                    pruned_at_epoch: Any) -> None:
    recorder = _Recorder(answer, from_epoch=0)

    result = run_trial(_assignment(tmp_path, epochs=5), recorder)

    assert (result.epochs_run, result.stopped, result.stopped_by) == (1, True, answer)
    assert [epoch for epoch, _ in recorder.calls] == [0]
    assert [step for step, _ in _scalars(tmp_path / "7" / "train")["epoch_loss"]] == [0]
    # "stop" hands the trial back for a retry: no session end, which TensorBoard would keep for good.
    assert _session(tmp_path / "7")[1] == status
    # Only a pruned trial says so: a cancelled one ends as aborted too, but without the scalar.
    assert _scalars(tmp_path / "7").get("pruned_at_epoch") == pruned_at_epoch


def test_a_trial_pruned_at_epoch_2_logs_that_it_trained_3_epochs_and_ends_its_session(tmp_path: Path) -> None:
    recorder = _Recorder(Action.prune, from_epoch=2)

    result = run_trial(_assignment(tmp_path, epochs=5), recorder)

    assert (result.epochs_run, result.stopped_by) == (3, Action.prune)
    assert [epoch for epoch, _ in recorder.calls] == [0, 1, 2]
    # pruned_at_epoch counts the epochs trained (the 0-based index + 1), at the step of the last one.
    assert _scalars(tmp_path / "7")["pruned_at_epoch"] == [(2, 3.0)]
    start, status = _session(tmp_path / "7")
    assert (start.group_name, status) == ("7", ABORTED)


def test_a_completed_trial_has_no_pruned_at_epoch(finished_trial: Any) -> None:
    sweep_dir, result, _ = finished_trial

    assert result.stopped_by is None
    assert "pruned_at_epoch" not in _scalars(sweep_dir / "7")


def test_a_trial_cancelled_between_batches_has_no_pruned_at_epoch(tmp_path: Path) -> None:
    recorder = _Recorder()

    # The sweep is cancelled while the second epoch trains.
    result = run_trial(_assignment(tmp_path, epochs=3), recorder,
                       interrupt=lambda: "cancel" if recorder.calls else None)

    assert (result.epochs_run, result.stopped_by) == (1, Action.cancel)
    assert set(_scalars(tmp_path / "7")) == {"val_accuracy", "num_params"}
    assert _session(tmp_path / "7")[1] == ABORTED


def test_every_epochs_metrics_include_the_models_parameter_count(tmp_path: Path) -> None:
    class CountParams(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.counts: list[int] = []

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.counts.append(self.model.count_params())

    recorder, counter = _Recorder(), CountParams()

    result = run_trial(_assignment(tmp_path, epochs=2), recorder, callbacks=[counter])

    assert counter.counts == [MLP_PARAMS, MLP_PARAMS]
    reported = [metrics["num_params"] for _, metrics in recorder.calls]
    assert reported == [float(MLP_PARAMS), float(MLP_PARAMS)]
    assert all(type(value) is float for value in reported)
    assert result.metrics["num_params"] == MLP_PARAMS
    # Not a per-epoch scalar of Keras's: one value, in the trial's own folder, for the HParams table.
    assert _scalars(tmp_path / "7")["num_params"] == [(1, float(MLP_PARAMS))]
    assert not any("num_params" in tag for tag in _scalars(tmp_path / "7" / "train"))


def test_a_wider_model_reports_more_parameters(tmp_path: Path) -> None:
    result = run_trial(_assignment(tmp_path, epochs=1, units=32), _Recorder())

    assert result.metrics["num_params"] == 64 * 32 + 32 + 32 * 10 + 10


def test_num_params_can_be_the_objective_and_is_logged_once(tmp_path: Path) -> None:
    assignment = _assignment(tmp_path, epochs=2).model_copy(
        update={"objective": Objective(metric="num_params", goal="minimize")})

    result = run_trial(assignment, _Recorder())

    assert (result.objective, result.objective_epoch) == (MLP_PARAMS, 1)
    assert _scalars(tmp_path / "7") == {"num_params": [(1, float(MLP_PARAMS))]}


def _digits_spec(**overrides: Any) -> Any:
    return parse_spec({"name": "digits", "model": "mlp", "dataset": "digits",
                       "objective": {"metric": "val_accuracy"}, "search": {"max_trials": 3},
                       "hparams": {"units": 16, "learning_rate": 0.01, "batch_size": BATCH_SIZE, "seed": 1},
                       **overrides})


def test_hparams_dashboard_tells_pruned_trials_from_completed_and_cancelled_ones(tmp_path: Path) -> None:
    run_trial(_assignment(tmp_path, trial_id=1, epochs=4), _Recorder())
    run_trial(_assignment(tmp_path, trial_id=2, epochs=4), _Recorder(Action.prune, from_epoch=2))
    run_trial(_assignment(tmp_path, trial_id=3, epochs=4), _Recorder(Action.cancel, from_epoch=2))
    write_experiment(tmp_path, _digits_spec())
    pruned_at_epoch = api_pb2.MetricName(group="", tag="pruned_at_epoch")

    groups = {group.name: group for group in _session_groups(tmp_path)}
    # The column a user filters on to see only the pruned trials, or sorts by (pruned ones first).
    only_pruned = _session_groups(tmp_path, [api_pb2.ColParams(
        metric=pruned_at_epoch, filter_interval=api_pb2.Interval(min_value=0, max_value=math.inf),
        exclude_missing_values=True)])
    sorted_by_it = _session_groups(tmp_path, [api_pb2.ColParams(
        metric=pruned_at_epoch, order=api_pb2.ORDER_DESC, missing_values_first=False)])

    assert {name: [session.status for session in group.sessions] for name, group in groups.items()} == \
        {"1": [api_pb2.STATUS_SUCCESS], "2": [ABORTED], "3": [ABORTED]}
    assert {name: [value.value for value in group.metric_values if value.name == pruned_at_epoch]
            for name, group in groups.items()} == {"1": [], "2": [3.0], "3": []}
    assert all(group.sessions[0].end_time_secs > 0 for group in groups.values())
    assert [group.name for group in only_pruned] == ["2"]
    assert sorted_by_it[0].name == "2"


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
                                         r"available: accuracy, learning_rate, loss, num_params, val_accuracy, "
                                         r"val_loss"):
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
    # Nothing of the pruned attempt is left: no pruned_at_epoch.
    assert _scalars(tmp_path / "7") == {"val_accuracy": [(0, pytest.approx(result.metrics["val_accuracy"]))],
                                        "num_params": [(0, result.metrics["num_params"])]}
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


def test_the_trials_session_is_named_after_its_folder_which_the_server_names_by_number(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A model that fails at once: the session is started (and ended FAILURE) without any training.
    def broken(hparams: dict[str, Any], info: Any) -> Any:
        raise RuntimeError("no such layer")

    monkeypatch.setattr(_registry, "models", _registry.Registry("model", {"broken": broken}))
    assignment = _assignment(tmp_path, model="broken").model_copy(
        update={"trial_id": 42, "number": 7, "logdir": str(tmp_path / "trial-0007")})

    with pytest.raises(RuntimeError, match="no such layer"):
        run_trial(assignment, _Recorder())

    start, _ = _session(tmp_path / "trial-0007")
    assert start.group_name == "trial-0007"

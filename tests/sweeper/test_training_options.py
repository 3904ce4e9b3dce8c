"""Every TrainSettings option reaches Keras: loss, metrics, class weights, early stopping, seed,
mixed precision, XLA, and the objective's epoch. Real (tiny) trials on iris, checked by their results."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorflow.python.framework import config as tf_config

from sweeper import _registry
from sweeper._spec import LOSSES, METRICS, EarlyStopping, Objective, TrainSettings
from sweeper.messages import Assignment
from sweeper.training import datasets, runner
from sweeper.training.datasets import DatasetInfo, current_data_root, load_dataset, split_arrays, training_data
from sweeper.training.models import build_cnn, build_mlp
from sweeper.training.runner import balanced_class_weights, build_loss, build_metrics, class_weights, run_trial

pytestmark = pytest.mark.training

HPARAMS = {"units": 8, "learning_rate": 0.01, "batch_size": 32}


def _assignment(logdir: Path, trial_id: int = 1, dataset: str = "iris", model: str = "mlp",
                objective: Objective | None = None, hparams: dict[str, Any] | None = None,
                **train: Any) -> Assignment:
    return Assignment(
        trial_id=trial_id, sweep_id=1, number=trial_id, hparams={**HPARAMS, **(hparams or {})}, model=model,
        dataset=dataset,
        objective=objective or Objective(metric="val_accuracy"), train=TrainSettings(**{"epochs": 1, **train}),
        logdir=str(logdir / str(trial_id)), lease_expires_at=datetime.now(timezone.utc) + timedelta(minutes=5),
        lease_token=1)


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []

    def __call__(self, epoch: int, metrics: dict[str, float]) -> str:
        self.calls.append((epoch, metrics))
        return "continue"


class _CapturingBuilder:
    """A model builder that records the model it built and what it saw while building it."""

    def __init__(self, build: Any = build_mlp) -> None:
        self._build = build
        self.models: list[keras.Model] = []
        self.policies: list[str] = []
        self.data_roots: list[Path] = []

    def __call__(self, hparams: dict[str, Any], info: DatasetInfo) -> keras.Model:
        self.policies.append(keras.mixed_precision.dtype_policy().name)
        self.data_roots.append(current_data_root())
        self.models.append(self._build(hparams, info))
        return self.models[-1]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> _CapturingBuilder:
    builder = _CapturingBuilder()
    monkeypatch.setattr(_registry, "models", _registry.Registry("model", {"mlp": builder, "cnn": build_cnn}))
    return builder


# -- loss and metrics --------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_trains_and_every_metric_is_logged_under_its_spec_name(tmp_path: Path, loss: str) -> None:
    settings = {"loss": loss, "metrics": list(METRICS)}

    result = run_trial(_assignment(tmp_path, **settings), _Recorder())

    assert set(result.metrics) == set(TrainSettings(**settings).metric_names())
    assert all(math.isfinite(value) for value in result.metrics.values()), result.metrics


def test_metrics_reach_tensorboard_without_keras_suffixes(tmp_path: Path) -> None:
    run_trial(_assignment(tmp_path, objective=Objective(metric="val_auc"), metrics=["auc", "precision", "recall"]),
              _Recorder())

    accumulator = EventAccumulator(str(tmp_path / "1" / "validation"))
    accumulator.Reload()
    epoch_tags = {tag for tag in accumulator.Tags()["tensors"] if tag.startswith("epoch_")}
    assert epoch_tags == {"epoch_loss", "epoch_auc", "epoch_precision", "epoch_recall"}


@pytest.mark.parametrize(("loss", "keras_loss"), [
    ("categorical_crossentropy", keras.losses.CategoricalCrossentropy()),
    ("categorical_focal_crossentropy", keras.losses.CategoricalFocalCrossentropy()),
    ("kl_divergence", keras.losses.KLDivergence()),
    ("poisson", keras.losses.Poisson()),
])
def test_categorical_losses_take_integer_labels_as_one_hot(loss: str, keras_loss: keras.losses.Loss) -> None:
    labels = np.array([0, 2, 1, 2])
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.3, 0.4, 0.3], [0.5, 0.25, 0.25]], "float32")

    ours = float(build_loss(loss)(labels, probabilities))

    assert ours == pytest.approx(float(keras_loss(np.eye(3)[labels], probabilities)), rel=1e-6)


@pytest.mark.parametrize(("name", "keras_metric"), [
    ("auc", keras.metrics.AUC()), ("precision", keras.metrics.Precision()), ("recall", keras.metrics.Recall()),
])
def test_auc_precision_and_recall_take_integer_labels_as_one_hot(name: str, keras_metric: keras.metrics.Metric) -> None:
    labels = np.array([0, 2, 1, 2, 0])
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.3, 0.6, 0.1], [0.6, 0.2, 0.2], [0.2, 0.7, 0.1]],
                             "float32")
    (metric,) = build_metrics([name])

    metric.update_state(labels, probabilities)
    keras_metric.update_state(np.eye(3)[labels], probabilities)

    assert metric.name == name
    assert float(metric.result()) == pytest.approx(float(keras_metric.result()), rel=1e-6)
    assert 0.0 < float(metric.result()) < 1.0


def test_unknown_loss_and_metric_are_refused_naming_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="unknown loss 'hinge'; allowed losses: sparse_categorical_crossentropy"):
        build_loss("hinge")
    with pytest.raises(ValueError, match="unknown metric 'f1'; allowed metrics: accuracy"):
        build_metrics(["accuracy", "f1"])


# -- class weights -----------------------------------------------------------------------------------

def test_balanced_weights_are_scikit_learns() -> None:
    labels = np.array([0] * 50 + [1] * 30 + [2] * 5 + [4] * 15)

    weights = balanced_class_weights(labels, num_classes=5)

    present = np.unique(labels)
    expected = compute_class_weight("balanced", classes=present, y=labels)
    assert {label: weights[label] for label in present} == pytest.approx(dict(zip(present.tolist(), expected)))
    # Class 3 never occurs in training; Keras still wants a weight for its index.
    assert weights[3] == 1.0


def test_balanced_weights_come_from_the_training_labels_of_an_imbalanced_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.array([0] * 70 + [1] * 20 + [2] * 10)
    np.savez(tmp_path / "skewed.npz", x=rng.normal(size=(100, 3)), y=y)
    train_labels = split_arrays(load_dataset("npz:skewed.npz", tmp_path), 0.2)[0][1]

    weights = class_weights("balanced", training_data("npz:skewed.npz", tmp_path, validation_split=0.2))

    assert len(train_labels) == 80
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=train_labels)
    assert weights == pytest.approx({0: expected[0], 1: expected[1], 2: expected[2]})
    assert weights[2] > weights[1] > 1.0 > weights[0]


def test_a_class_weight_mapping_gives_every_class_a_weight_and_refuses_unknown_classes() -> None:
    data = training_data("iris")

    assert class_weights({1: 3.0}, data) == {0: 1.0, 1: 3.0, 2: 1.0}
    assert class_weights(None, data) is None
    with pytest.raises(ValueError, match="class_weight names class 3, but the dataset's classes are 0 to 2"):
        class_weights({3: 2.0}, data)


def test_class_weights_scale_the_training_loss_only(tmp_path: Path) -> None:
    # A learning rate this small leaves the weights where the seed put them, so only the loss's
    # weighting differs between the two trials: twice every example's weight is twice the loss.
    hparams = {"optimizer": "sgd", "learning_rate": 1e-9}
    plain = run_trial(_assignment(tmp_path, trial_id=1, hparams=hparams, seed=4), _Recorder())
    weighted = run_trial(_assignment(tmp_path, trial_id=2, hparams=hparams, seed=4,
                                     class_weight={0: 2.0, 1: 2.0, 2: 2.0}), _Recorder())

    assert weighted.metrics["loss"] == pytest.approx(2 * plain.metrics["loss"], rel=1e-4)
    assert weighted.metrics["val_loss"] == pytest.approx(plain.metrics["val_loss"], rel=1e-4)


def test_balanced_class_weight_trains(tmp_path: Path) -> None:
    result = run_trial(_assignment(tmp_path, class_weight="balanced", objective=Objective(metric="val_auc"),
                                   metrics=["auc"]), _Recorder())

    assert math.isfinite(result.metrics["loss"])


# -- early stopping ----------------------------------------------------------------------------------

@pytest.mark.parametrize("early_stopping", [
    # val_loss cannot fall by 10 in an epoch; a constant learning rate never falls at all.
    EarlyStopping(patience=1, monitor="val_loss", min_delta=10.0),
    EarlyStopping(patience=1, monitor="learning_rate"),
], ids=["val_loss", "learning_rate"])
def test_early_stopping_ends_training_when_patience_runs_out(tmp_path: Path, early_stopping: EarlyStopping) -> None:
    recorder = _Recorder()

    result = run_trial(_assignment(tmp_path, epochs=10, early_stopping=early_stopping), recorder)

    # Epoch 0 sets the best value; epoch 1 is one epoch without improvement, which exhausts patience 1.
    assert (result.epochs_run, result.stopped_by, result.stopped) == (2, runner.EARLY_STOPPING, False)
    assert [epoch for epoch, _ in recorder.calls] == [0, 1]


def test_early_stopping_lets_an_improving_trial_run_every_epoch(tmp_path: Path) -> None:
    result = run_trial(_assignment(tmp_path, epochs=3, hparams={"learning_rate": 0.05},
                                   early_stopping=EarlyStopping(patience=5)), _Recorder())

    assert (result.epochs_run, result.stopped_by) == (3, None)


@pytest.mark.parametrize(("monitor", "mode"), [
    ("val_loss", "min"), ("loss", "min"), ("val_sparse_categorical_crossentropy", "min"), ("learning_rate", "min"),
    ("val_accuracy", "max"), ("auc", "max"), ("val_precision", "max"), ("val_recall", "max"),
])
def test_early_stopping_watches_each_metric_in_its_own_direction(monitor: str, mode: str) -> None:
    (callback,) = runner._early_stopping(EarlyStopping(patience=2, monitor=monitor, min_delta=0.01,
                                                       restore_best_weights=True))

    assert (callback.monitor, callback.mode, callback.patience, callback.restore_best_weights) == \
        (monitor, mode, 2, True)
    assert abs(callback.min_delta) == 0.01


# -- seed --------------------------------------------------------------------------------------------

def _every_epoch(tmp_path: Path, trial_id: int, **options: Any) -> list[dict[str, float]]:
    recorder = _Recorder()
    run_trial(_assignment(tmp_path, trial_id=trial_id, epochs=3, hparams={"dropout": 0.2, **options.pop("hparams", {})},
                          **options), recorder)
    return [metrics for _, metrics in recorder.calls]


def test_the_same_seed_gives_exactly_the_same_metrics_in_every_epoch(tmp_path: Path) -> None:
    first = _every_epoch(tmp_path, 1, seed=7)
    second = _every_epoch(tmp_path, 2, seed=7)
    other_seed = _every_epoch(tmp_path, 3, seed=8)

    assert len(first) == 3
    assert first == second
    assert other_seed != first
    assert [m["loss"] for m in other_seed] != [m["loss"] for m in first]


def test_a_seed_hparam_wins_over_train_seed(tmp_path: Path) -> None:
    swept = _every_epoch(tmp_path, 1, seed=7, hparams={"seed": 8})

    assert swept == _every_epoch(tmp_path, 2, seed=8)


def test_op_determinism_is_only_on_during_a_seeded_trial(tmp_path: Path) -> None:
    seen: list[bool] = []

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> str:
        seen.append(tf_config.is_op_determinism_enabled())
        return "continue"

    assert not tf_config.is_op_determinism_enabled()
    run_trial(_assignment(tmp_path, seed=1), on_epoch_end)

    assert seen == [True]
    assert not tf_config.is_op_determinism_enabled()


# -- mixed precision and XLA -------------------------------------------------------------------------

def test_mixed_precision_builds_float16_layers_with_a_float32_softmax_and_trains(
        tmp_path: Path, captured: _CapturingBuilder) -> None:
    result = run_trial(_assignment(tmp_path, epochs=2, mixed_precision=True), _Recorder())

    (model,) = captured.models
    hidden, head = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert captured.policies == ["mixed_float16"]
    assert (hidden.compute_dtype, hidden.variable_dtype) == ("float16", "float32")
    assert head.compute_dtype == "float32" and model.output.dtype == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert result.epochs_run == 2 and math.isfinite(result.metrics["loss"])
    assert result.metrics["learning_rate"] == pytest.approx(0.01)
    assert keras.mixed_precision.dtype_policy().name == "float32"


def test_the_dtype_policy_is_restored_after_a_failing_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policies: list[str] = []

    def broken(hparams: dict[str, Any], info: DatasetInfo) -> keras.Model:
        policies.append(keras.mixed_precision.dtype_policy().name)
        raise RuntimeError("no such layer")

    monkeypatch.setattr(_registry, "models", _registry.Registry("model", {"mlp": broken}))

    with pytest.raises(RuntimeError, match="no such layer"):
        run_trial(_assignment(tmp_path, mixed_precision=True), _Recorder())

    assert policies == ["mixed_float16"]
    assert keras.mixed_precision.dtype_policy().name == "float32"


def test_a_trial_without_mixed_precision_keeps_float32(tmp_path: Path, captured: _CapturingBuilder) -> None:
    run_trial(_assignment(tmp_path), _Recorder())

    assert captured.policies == ["float32"]
    assert {layer.compute_dtype for layer in captured.models[0].layers[1:]} == {"float32"}


@pytest.mark.parametrize("jit_compile", [False, True])
def test_jit_compile_reaches_keras(tmp_path: Path, captured: _CapturingBuilder, jit_compile: bool) -> None:
    if jit_compile and not tf.test.is_built_with_xla():
        pytest.skip("this TensorFlow is built without XLA, so jit_compile cannot run here")

    result = run_trial(_assignment(tmp_path, jit_compile=jit_compile), _Recorder())

    assert captured.models[0].jit_compile is jit_compile
    assert math.isfinite(result.metrics["loss"])


# -- the objective's epoch ---------------------------------------------------------------------------

@pytest.mark.parametrize(("epoch", "expected"), [("best", 0), ("last", 2)])
def test_objective_epoch_picks_the_epoch_whose_metrics_are_the_result(
        tmp_path: Path, epoch: str, expected: int) -> None:
    # An exponentially decaying learning rate is highest after the first epoch: a known best.
    objective = Objective(metric="learning_rate", goal="maximize", epoch=epoch)
    recorder = _Recorder()

    result = run_trial(_assignment(tmp_path, epochs=3, objective=objective, hparams={"lr_schedule": "exponential"}),
                       recorder)

    assert (result.objective_epoch, result.epochs_run) == (expected, 3)
    assert result.metrics == recorder.calls[expected][1]
    assert result.objective == recorder.calls[expected][1]["learning_rate"]
    accumulator = EventAccumulator(str(tmp_path / "1"), size_guidance={"tensors": 0})
    accumulator.Reload()
    assert [(event.step, pytest.approx(float(tf.make_ndarray(event.tensor_proto))))
            for event in accumulator.Tensors("learning_rate")] == [(expected, result.objective)]


def test_best_epoch_of_a_minimized_objective_is_its_lowest_value(tmp_path: Path) -> None:
    recorder = _Recorder()
    objective = Objective(metric="val_loss", goal="minimize", epoch="best")

    result = run_trial(_assignment(tmp_path, epochs=4, objective=objective, hparams={"learning_rate": 0.3}),
                       recorder)

    values = [metrics["val_loss"] for _, metrics in recorder.calls]
    assert result.objective_epoch == values.index(min(values))
    assert result.metrics == recorder.calls[result.objective_epoch][1]


@pytest.mark.parametrize(("goal", "values", "best"), [
    ("maximize", [0.5, 0.9, 0.9, 0.7], 1),
    ("minimize", [0.5, 0.2, 0.2, 0.7], 1),
    ("minimize", [math.nan, 0.4, math.nan], 1),
    ("maximize", [math.nan, math.nan], 1),
])
def test_best_epoch_takes_the_first_best_and_skips_nan(goal: str, values: list[float], best: int) -> None:
    history = [{"m": value} for value in values]

    assert runner._objective_epoch(Objective(metric="m", goal=goal, epoch="best"), history) == best
    assert runner._objective_epoch(Objective(metric="m", goal=goal, epoch="last"), history) == len(values) - 1


# -- model builders see the trial's data root ---------------------------------------------------------

def test_model_builders_see_the_workers_data_root(tmp_path: Path, captured: _CapturingBuilder,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "_cache", {})
    np.savez(tmp_path / "small.npz", x=np.random.default_rng(0).normal(size=(20, 3)), y=np.arange(20) % 2)

    run_trial(_assignment(tmp_path / "runs", dataset="npz:small.npz"), _Recorder(), data_root=tmp_path)

    assert captured.data_roots == [tmp_path]
    assert current_data_root() == datasets.DEFAULT_DATA_ROOT

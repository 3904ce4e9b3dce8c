"""Datasets as cached tf.data pipelines: loaded once per process, batched per trial, and DataSplits
(a dataset function's own train/validation split) with tf.data or array parts."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sweeper import _registry
from sweeper._spec import Objective, TrainSettings
from sweeper.messages import Assignment
from sweeper.training import datasets
from sweeper.training.datasets import (DataSplits, Dataset, DatasetError, DatasetInfo, load_dataset, training_data)
from sweeper.training.runner import class_weights, run_trial

pytestmark = pytest.mark.training

INFO = DatasetInfo(input_shape=(4,), num_classes=3)


@pytest.fixture(autouse=True)
def _empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "_cache", {})


def _register(monkeypatch: pytest.MonkeyPatch, **builders: Callable[[], Any]) -> None:
    """Dataset functions registered by name, the way a plugin registers its own."""
    registry = _registry.DatasetRegistry(formats={"images": datasets.load_image_folder})
    for name, builder in builders.items():
        registry.register(name, builder)
    monkeypatch.setattr(_registry, "datasets", registry)


def _assignment(logdir: Path, dataset: str, trial_id: int = 1, epochs: int = 1, **hparams: Any) -> Assignment:
    return Assignment(
        trial_id=trial_id, sweep_id=1, number=trial_id, hparams={"units": 8, "batch_size": 16, "seed": 3, **hparams},
        model="mlp",
        dataset=dataset, objective=Objective(metric="val_accuracy"),
        train=TrainSettings(epochs=epochs, validation_split=0.25), logdir=str(logdir / str(trial_id)),
        lease_expires_at=datetime.now(timezone.utc) + timedelta(minutes=5), lease_token=1)


def _arrays(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(count) % 3
    # Learnable: the label shifts the features' mean.
    return (rng.normal(size=(count, 4)) + y[:, None]).astype("float32"), y.astype("int64")


def _generated(count: int, calls: list[str], seed: int = 0) -> Any:
    """A tf.data part of unknown length whose every full read is counted in `calls`."""
    x, y = _arrays(count, seed)

    def examples() -> Iterator[tuple[np.ndarray, np.int64]]:
        calls.append("read")
        yield from zip(x, y)

    return tf.data.Dataset.from_generator(examples, output_signature=(
        tf.TensorSpec((4,), tf.float32), tf.TensorSpec((), tf.int64)))


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []

    def __call__(self, epoch: int, metrics: dict[str, float]) -> str:
        self.calls.append((epoch, metrics))
        return "continue"


def test_a_second_trial_in_the_process_does_not_call_the_dataset_function_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def counted() -> Dataset:
        calls.append("load")
        x, y = _arrays(80)
        return Dataset(x=x, y=y, info=INFO)

    _register(monkeypatch, counted=counted)

    first = run_trial(_assignment(tmp_path, "counted", trial_id=1), _Recorder())
    second = run_trial(_assignment(tmp_path, "counted", trial_id=2), _Recorder())

    assert calls == ["load"]
    assert training_data("counted", validation_split=0.25) is training_data("counted", validation_split=0.25)
    # The same seed over the same cached pipeline: the same training, in a process that has trained before.
    assert first.metrics == second.metrics


def test_each_validation_split_gets_its_own_pipelines_from_one_load(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def counted() -> Dataset:
        calls.append("load")
        x, y = _arrays(100)
        return Dataset(x=x, y=y, info=INFO)

    _register(monkeypatch, counted=counted)

    quarter, fifth = training_data("counted", validation_split=0.25), training_data("counted", validation_split=0.2)

    assert (quarter.train_size, fifth.train_size) == (75, 80)
    assert int(quarter.validation.cardinality()) == 25
    assert calls == ["load"]


def test_batches_are_shuffled_from_the_seed_and_reshuffled_every_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = np.arange(64, dtype="float32")[:, None], np.arange(64) % 2
    _register(monkeypatch, ordered=lambda: Dataset(x=x, y=y, info=DatasetInfo((1,), 2)))
    data = training_data("ordered", validation_split=0.5)

    def epochs(seed: int | None, count: int = 2) -> list[list[float]]:
        train, _ = data.batches(batch_size=8, seed=seed)
        return [np.concatenate([batch_x[:, 0] for batch_x, _ in train.as_numpy_iterator()]).tolist()
                for _ in range(count)]

    first, second = epochs(seed=1)

    assert sorted(first) == list(range(32))
    assert first != list(range(32)) and second != first
    assert epochs(seed=1) == [first, second]
    assert epochs(seed=2)[0] != first
    train, validation = data.batches(batch_size=8, seed=1)
    assert (int(train.cardinality()), int(validation.cardinality())) == (4, 4)


# Keras warns so when it does not know a part's length: the runner counts, so it always does.
@pytest.mark.filterwarnings("error:Your input ran out of data")
def test_datasplits_with_tf_data_parts_trains_reading_each_part_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train_reads: list[str] = []
    validation_reads: list[str] = []
    _register(monkeypatch, splits=lambda: DataSplits(train=_generated(96, train_reads),
                                                      validation=_generated(30, validation_reads, seed=1), info=INFO))
    recorder = _Recorder()

    result = run_trial(_assignment(tmp_path, "splits", trial_id=1, epochs=2, lr_schedule="exponential",
                                   learning_rate=0.01), recorder)
    run_trial(_assignment(tmp_path, "splits", trial_id=2), _Recorder())

    assert result.epochs_run == 2 and math.isfinite(result.metrics["val_loss"])
    # Counted once (96 examples in 6 batches of 16), then read from the cache by every later epoch and trial.
    assert training_data("splits").train_size == 96
    assert (train_reads, validation_reads) == (["read"], ["read"])
    # The schedule decays per epoch of 6 steps only if the runner knew the steps per epoch.
    assert [metrics["learning_rate"] for _, metrics in recorder.calls] == pytest.approx([0.01 * 0.9, 0.01 * 0.9**2])


def test_datasplits_with_array_parts_keeps_its_own_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, arrays=lambda: DataSplits(train=_arrays(40), validation=_arrays(10, seed=1), info=INFO))

    result = run_trial(_assignment(tmp_path, "arrays"), _Recorder())

    data = training_data("arrays", validation_split=0.5)
    assert data is training_data("arrays", validation_split=0.25)
    assert (data.train_size, int(data.validation.cardinality())) == (40, 10)
    assert math.isfinite(result.metrics["val_loss"])


def test_balanced_class_weights_read_the_labels_of_a_tf_data_train_part(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    labels = np.array([0] * 12 + [1] * 4 + [2] * 2)
    train = tf.data.Dataset.from_generator(
        lambda: (reads.append("read"), iter(zip(np.zeros((18, 4), "float32"), labels)))[1],
        output_signature=(tf.TensorSpec((4,), tf.float32), tf.TensorSpec((), tf.int64)))
    _register(monkeypatch, skewed=lambda: DataSplits(train=train, validation=_arrays(3), info=INFO))
    data = training_data("skewed")

    weights = class_weights("balanced", data)

    assert weights == pytest.approx({0: 18 / (3 * 12), 1: 18 / (3 * 4), 2: 18 / (3 * 2)})
    assert data.train_size == 18
    assert reads == ["read"]


@pytest.mark.parametrize(("part", "rule"), [
    (lambda: tf.data.Dataset.from_tensor_slices(np.zeros((4, 4), "float32")), "must yield (features, label) pairs"),
    (lambda: np.zeros((4, 4)), "must be a tf.data.Dataset of (features, label) pairs or an (x, y) pair of arrays"),
    (lambda: (np.zeros((4, 4)), np.zeros(3)), "needs as many labels as examples"),
])
def test_a_datasplits_part_of_the_wrong_shape_is_refused_by_name(
        monkeypatch: pytest.MonkeyPatch, part: Callable[[], Any], rule: str) -> None:
    _register(monkeypatch, broken=lambda: DataSplits(train=part(), validation=_arrays(3), info=INFO))

    with pytest.raises(DatasetError, match=r"dataset 'broken': the train part " + rule.replace("(", r"\(")
                       .replace(")", r"\)")):
        training_data("broken")


def test_an_endless_train_part_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    endless = tf.data.Dataset.from_tensor_slices(_arrays(8)).repeat()
    _register(monkeypatch, endless=lambda: DataSplits(train=endless, validation=_arrays(3), info=INFO))

    with pytest.raises(DatasetError, match="the train part of a dataset must be finite"):
        run_trial(_assignment(tmp_path, "endless"), _Recorder())


def test_load_dataset_returns_datasplits_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    splits = DataSplits(train=_arrays(8), validation=_arrays(3), info=INFO)
    _register(monkeypatch, splits=lambda: splits)

    assert load_dataset("splits") is splits


def test_an_image_folder_is_decoded_once_for_every_trial_in_the_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (tmp_path / "pics" / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(
                tmp_path / "pics" / label / f"{i}.png")
    reads: list[Path] = []
    real_reader = keras.utils.image_dataset_from_directory

    def counted_reader(directory: Any, **kwargs: Any) -> Any:
        reads.append(Path(directory))
        return real_reader(directory, **kwargs)

    monkeypatch.setattr(keras.utils, "image_dataset_from_directory", counted_reader)

    for trial_id in (1, 2):
        result = run_trial(_assignment(tmp_path / "runs", "images:pics", trial_id=trial_id, units=4), _Recorder(),
                           data_root=tmp_path)
        assert math.isfinite(result.metrics["loss"])

    assert reads == [(tmp_path / "pics").resolve()]

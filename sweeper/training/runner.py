"""The Keras trial runner: train one assignment and log it for TensorBoard's HParams dashboard.

The runner trains; it never decides. After each epoch it hands the metrics to `on_epoch_end` (the
worker reports them to the server) and stops early when the answer is "stop" or "prune".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from sweeper import _registry
from sweeper.hparams_log import TrialSession
from sweeper.messages import Assignment
from sweeper.training.datasets import Dataset, load_dataset
from sweeper.training.schedules import build_learning_rate, build_optimizer, schedule_callbacks

EpochCallback = Callable[[int, dict[str, float]], str]
"""Called with (epoch index from 0, metrics); answers "continue", "stop" or "prune"."""

_STOP_ACTIONS = frozenset({"stop", "prune"})


@dataclass(frozen=True)
class TrialResult:
    metrics: dict[str, float]
    """The last epoch's metrics: loss, accuracy, val_loss, val_accuracy, learning_rate."""
    epochs_run: int
    stopped: bool
    """True when `on_epoch_end` answered "stop" or "prune"."""


def run_trial(assignment: Assignment, on_epoch_end: EpochCallback, data_root: Path | None = None) -> TrialResult:
    """Train the assignment's model; log train/ and validation/ scalars and the HParams session.

    File datasets (npz:..., images:...) are read under `data_root` (default ./data). Any exception
    ends the HParams session as FAILURE and propagates, so the worker can report it.
    """
    hparams = assignment.hparams
    _remove_earlier_attempts(Path(assignment.logdir))
    try:
        with TrialSession(assignment.logdir, assignment.trial_id, hparams) as session:
            if "seed" in hparams:
                keras.utils.set_random_seed(int(hparams["seed"]))
            dataset = load_dataset(assignment.dataset, data_root)
            (x_train, y_train), validation = _split(dataset, assignment.train.validation_split)
            batch_size = int(hparams.get("batch_size", assignment.train.batch_size))
            if batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, but got {batch_size}")
            epochs = assignment.train.epochs
            steps_per_epoch = math.ceil(len(x_train) / batch_size)

            model = _registry.models.get(assignment.model)(hparams, dataset.info)
            learning_rate = build_learning_rate(hparams, epochs, steps_per_epoch)
            model.compile(optimizer=build_optimizer(hparams, learning_rate),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])

            reporter = _EpochReporter(on_epoch_end, assignment.objective.metric)
            model.fit(x_train, y_train, validation_data=validation, batch_size=batch_size, epochs=epochs,
                      shuffle=True, verbose=0,
                      callbacks=[*schedule_callbacks(hparams), _LiveTensorBoard(assignment.logdir), reporter])

            metrics = reporter.last_metrics
            _require_objective(assignment.objective.metric, metrics)
            session.write_objective(assignment.objective.metric, metrics[assignment.objective.metric],
                                    step=reporter.epochs_run - 1)
            return TrialResult(metrics=metrics, epochs_run=reporter.epochs_run, stopped=reporter.stopped)
    finally:
        # Frees the graph and layer-name counters, so one worker process can run many trials.
        keras.backend.clear_session()


def _remove_earlier_attempts(trial_dir: Path) -> None:
    # A retried trial gets the same folder. Left there, an earlier attempt's scalars would mix with
    # this one's (the dashboard takes a metric's value at the highest step, whichever attempt wrote
    # it) and its session would compete with this one. Only event files go: nothing else is ours.
    for folder in (trial_dir, trial_dir / "train", trial_dir / "validation"):
        for path in folder.glob("*tfevents*"):
            if path.is_file():
                path.unlink(missing_ok=True)


def _split(dataset: Dataset, validation_split: float) -> tuple[tuple[np.ndarray, np.ndarray],
                                                                tuple[np.ndarray, np.ndarray]]:
    # The same cut as Keras's own `validation_split` (the last fraction, not shuffled), done here so
    # that the number of training examples, and with it the steps per epoch, is known exactly.
    split_at = int(math.floor(len(dataset.x) * (1.0 - validation_split)))
    if not 0 < split_at < len(dataset.x):
        raise ValueError(f"validation_split {validation_split} leaves no training or no validation examples "
                         f"out of {len(dataset.x)}")
    return (dataset.x[:split_at], dataset.y[:split_at]), (dataset.x[split_at:], dataset.y[split_at:])


def _require_objective(metric: str, metrics: dict[str, float]) -> None:
    if metric not in metrics:
        raise ValueError(f"objective metric {metric!r} is not among the trial's metrics; "
                         f"available: {', '.join(sorted(metrics))}")


class _EpochReporter(keras.callbacks.Callback):
    """Hands each epoch's metrics (and the learning rate) to the worker and obeys its answer."""

    def __init__(self, on_epoch_end: EpochCallback, objective_metric: str):
        super().__init__()
        self._on_epoch_end = on_epoch_end
        self._objective_metric = objective_metric
        self.last_metrics: dict[str, float] = {}
        self.epochs_run = 0
        self.stopped = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        metrics = {name: float(value) for name, value in (logs or {}).items()}
        # The rate the optimizer will use next, the same value Keras's TensorBoard callback logs as
        # epoch_learning_rate (it evaluates a schedule at the optimizer's step count).
        metrics["learning_rate"] = float(self.model.optimizer.learning_rate)
        if epoch == 0:
            # Fail on the first epoch, not after the whole training, when the objective names no metric.
            _require_objective(self._objective_metric, metrics)
        self.last_metrics = metrics
        self.epochs_run = epoch + 1
        if self._on_epoch_end(epoch, dict(metrics)) in _STOP_ACTIONS:
            self.model.stop_training = True
            self.stopped = True


class _LiveTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback, flushed after every epoch so the dashboards update while training.

    Its writers otherwise flush every two minutes, and a sweep's trials are often shorter than that.
    The graph is not written: one per trial is noise in a sweep and costs time and disk.
    """

    def __init__(self, log_dir: str):
        super().__init__(log_dir=log_dir, write_graph=False)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_epoch_end(epoch, logs)
        # `_writers` is the callback's own cache of the writers it has opened (Keras 3).
        for writer in getattr(self, "_writers", {}).values():
            writer.flush()

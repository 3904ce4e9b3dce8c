"""How a trial fails or is cut short in the runner: a NaN loss, out of memory, a retryable error, an
interrupt after a batch. What is left behind (session end, scalars, checkpoint) is checked on disk.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import pytest
import tensorflow as tf
from keras import ops
from tensorboard.plugins.hparams import api_pb2

from sweeper import RetryableError, _registry
from sweeper._errors import NonFiniteLossError
from sweeper.training.checkpoints import TrialCheckpoint
from sweeper.training.runner import run_trial
from test_runner import ABORTED, STEPS_PER_EPOCH, _assignment, _Recorder, _scalars, _session


class _DivergesAfter(keras.layers.Layer):
    """Passes its input through, until it has been trained on `steps` batches: then it outputs NaN."""

    def __init__(self, steps: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.steps = steps

    def build(self, input_shape: Any) -> None:
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, inputs: Any, training: bool = False) -> Any:
        if training:
            self.calls.assign_add(1.0)
        return ops.where(self.calls > self.steps, inputs * math.nan, inputs)


def _use_model(monkeypatch: pytest.MonkeyPatch, builder: Any) -> None:
    monkeypatch.setattr(_registry, "models", _registry.Registry("model", {"mlp": builder}))


def test_a_loss_that_becomes_nan_fails_the_trial_at_that_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def diverging(hparams: dict[str, Any], info: Any) -> keras.Model:
        inputs = keras.Input(info.input_shape)
        hidden = _DivergesAfter(STEPS_PER_EPOCH + 2)(keras.layers.Flatten()(inputs))
        return keras.Model(inputs, keras.layers.Dense(info.num_classes, activation="softmax")(hidden))

    _use_model(monkeypatch, diverging)
    recorder = _Recorder()

    with pytest.raises(NonFiniteLossError, match=r"^loss became NaN at epoch 1 \(batch 2\)$"):
        run_trial(_assignment(tmp_path, epochs=3), recorder)

    assert [epoch for epoch, _ in recorder.calls] == [0]  # the diverged epoch is not reported
    assert [step for step, _ in _scalars(tmp_path / "7" / "train")["epoch_loss"]] == [0]
    assert _session(tmp_path / "7")[1] == api_pb2.STATUS_FAILURE
    assert not (tmp_path / "7" / "checkpoint").exists()  # not retried: nothing will resume


def test_a_model_that_runs_out_of_memory_fails_with_tensorflows_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_trial(_assignment(tmp_path, epochs=3), _Recorder("stop", from_epoch=0))  # a checkpoint to resume from

    def too_big(hparams: dict[str, Any], info: Any) -> keras.Model:
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[65536,65536]")

    _use_model(monkeypatch, too_big)

    with pytest.raises(tf.errors.ResourceExhaustedError, match="OOM when allocating"):
        run_trial(_assignment(tmp_path, epochs=3), _Recorder())

    assert _session(tmp_path / "7")[1] == api_pb2.STATUS_FAILURE
    assert not (tmp_path / "7" / "checkpoint").exists()


def test_a_retryable_error_keeps_the_checkpoint_for_the_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_trial(_assignment(tmp_path, epochs=3), _Recorder("stop", from_epoch=0))

    def flaky(hparams: dict[str, Any], info: Any) -> keras.Model:
        raise RetryableError("the feature store timed out")

    _use_model(monkeypatch, flaky)

    with pytest.raises(RetryableError, match="timed out"):
        run_trial(_assignment(tmp_path, epochs=3), _Recorder())

    resume = TrialCheckpoint(tmp_path / "7" / "checkpoint").load()
    assert resume is not None and resume.epochs_done == 1
    assert _session(tmp_path / "7")[1] == api_pb2.STATUS_FAILURE  # until a retry rewinds the folder


class _InterruptAfterEpoch:
    """An `interrupt` that answers `action` once `recorder` has seen an epoch, counting its polls."""

    def __init__(self, recorder: _Recorder, action: str, epochs: int = 1):
        self._recorder, self._action, self._epochs = recorder, action, epochs
        self.polls_after_answering = 0

    def __call__(self) -> str | None:
        if len(self._recorder.calls) < self._epochs:
            return None
        self.polls_after_answering += 1
        return self._action


def test_cancel_stops_training_after_the_current_batch_and_drops_the_partial_epoch(tmp_path: Path) -> None:
    recorder = _Recorder()
    interrupt = _InterruptAfterEpoch(recorder, "cancel")

    result = run_trial(_assignment(tmp_path, epochs=5), recorder, interrupt=interrupt)

    assert interrupt.polls_after_answering == 1  # not a single batch more
    assert (result.epochs_run, result.stopped_by, result.stopped) == (1, "cancel", True)
    assert [epoch for epoch, _ in recorder.calls] == [0]
    assert [step for step, _ in _scalars(tmp_path / "7" / "train")["epoch_loss"]] == [0]
    assert [step for step, _ in _scalars(tmp_path / "7" / "validation")["epoch_loss"]] == [0]
    assert _session(tmp_path / "7")[1] == ABORTED
    assert not (tmp_path / "7" / "checkpoint").exists()


def test_cancel_during_the_first_epoch_ends_the_session_without_an_objective(tmp_path: Path) -> None:
    result = run_trial(_assignment(tmp_path, epochs=5), _Recorder(), interrupt=lambda: "cancel")

    assert (result.epochs_run, result.stopped_by, result.metrics, result.objective_epoch) == (0, "cancel", {}, -1)
    assert math.isnan(result.objective)
    assert _session(tmp_path / "7")[1] == ABORTED
    assert _scalars(tmp_path / "7") == {}


def test_an_interrupt_to_stop_keeps_the_checkpoint_of_the_last_whole_epoch(tmp_path: Path) -> None:
    recorder = _Recorder()

    result = run_trial(_assignment(tmp_path, epochs=5), recorder, interrupt=_InterruptAfterEpoch(recorder, "stop", 2))

    assert (result.epochs_run, result.stopped_by) == (2, "stop")
    resume = TrialCheckpoint(tmp_path / "7" / "checkpoint").load()
    assert resume is not None and resume.epochs_done == 2
    assert _session(tmp_path / "7")[1] is None


def test_an_interrupt_with_an_unknown_answer_names_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"an interrupt must answer None, 'cancel' or 'stop', but got 'prune'"):
        run_trial(_assignment(tmp_path, epochs=1), _Recorder(), interrupt=lambda: "prune")

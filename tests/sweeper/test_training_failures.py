"""How a trial fails or is cut short in the runner: a NaN loss, out of memory, a retryable error, an
interrupt after a batch, a trial abandoned to another lease, logs or a checkpoint that cannot be written.
What is left behind (session end, scalars, checkpoint) is checked on disk.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import keras
import pytest
import tensorflow as tf
from keras import ops
from tensorboard.plugins.hparams import api_pb2

from sweeper import InfrastructureError, NonFiniteLossError, RetryableError, TrialAbandonedError, _registry
from sweeper.training.checkpoints import STATE_FILE, TrialCheckpoint, lease_folder_name
from sweeper.training.runner import run_trial
from test_runner import ABORTED, STEPS_PER_EPOCH, _assignment, _Recorder, _scalars, _session


pytestmark = pytest.mark.training


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


def _epochs_saved(checkpoint_dir: Path) -> int | None:
    resume = TrialCheckpoint(checkpoint_dir).load()
    return resume.epochs_done if resume is not None else None


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
    # Left for the worker to delete once the server has the failure.
    assert _epochs_saved(tmp_path / "7" / "checkpoint") == 1


def test_a_model_that_runs_out_of_memory_fails_with_tensorflows_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_trial(_assignment(tmp_path, epochs=3), _Recorder("stop", from_epoch=0))  # a checkpoint to resume from

    def too_big(hparams: dict[str, Any], info: Any) -> keras.Model:
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[65536,65536]")

    _use_model(monkeypatch, too_big)

    with pytest.raises(tf.errors.ResourceExhaustedError, match="OOM when allocating"):
        run_trial(_assignment(tmp_path, epochs=3, lease_token=2), _Recorder())

    assert _session(tmp_path / "7")[1] == api_pb2.STATUS_FAILURE
    assert _epochs_saved(tmp_path / "7" / "checkpoint") == 1


def test_a_retryable_error_keeps_the_checkpoint_for_the_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_trial(_assignment(tmp_path, epochs=3), _Recorder("stop", from_epoch=0))

    def flaky(hparams: dict[str, Any], info: Any) -> keras.Model:
        raise RetryableError("the feature store timed out")

    _use_model(monkeypatch, flaky)

    with pytest.raises(RetryableError, match="timed out"):
        run_trial(_assignment(tmp_path, epochs=3, lease_token=2), _Recorder())

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
    assert _epochs_saved(tmp_path / "7" / "checkpoint") == 1


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


# -- abandoned: the trial is another lease's now ----------------------------------------------------

class _AbandonedAt:
    """Reports like `_Recorder` (as `on_epoch_end`, or as `interrupt` polled after each batch) until
    `epoch`: there it finds the trial's lease taken over, as the worker does when a call is refused."""

    def __init__(self, epoch: int):
        self.recorder = _Recorder()
        self.refusal = LookupError("409: lease token 1 of trial 7 is stale")
        self.error = TrialAbandonedError("trial 7: lease 1 was superseded by lease 2")
        self._epoch = epoch

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> str:
        self.recorder(epoch, metrics)
        if epoch == self._epoch:
            raise self.error from self.refusal
        return "continue"

    def interrupt(self) -> None:
        if len(self.recorder.calls) == self._epoch:  # the first batch of that epoch
            raise self.error from self.refusal


@pytest.mark.parametrize("where", ["on_epoch_end", "interrupt"])
def test_an_abandoned_trial_writes_nothing_of_that_epoch_and_the_error_reaches_the_caller(
        tmp_path: Path, where: str) -> None:
    abandoned = _AbandonedAt(1)
    on_epoch_end = abandoned.on_epoch_end if where == "on_epoch_end" else abandoned.recorder
    interrupt = abandoned.interrupt if where == "interrupt" else None

    with pytest.raises(TrialAbandonedError) as raised:
        run_trial(_assignment(tmp_path, epochs=4), on_epoch_end, interrupt=interrupt)

    assert raised.value is abandoned.error and raised.value.__cause__ is abandoned.refusal
    # Epoch 0's checkpoint, and nothing of epoch 1: no save, no scalars (not even Keras's evaluation
    # scalars, written as validation ends), no session end, no objective.
    lease_folder = tmp_path / "7" / "checkpoint" / lease_folder_name(1)
    assert sorted(path.name for path in lease_folder.iterdir()) == ["epochs-000001.weights.h5", STATE_FILE]
    train, validation = _scalars(tmp_path / "7" / "train"), _scalars(tmp_path / "7" / "validation")
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_learning_rate"):
        assert [step for step, _ in train[tag]] == [0], tag
    for tag in ("epoch_loss", "epoch_accuracy"):
        assert [step for step, _ in validation[tag]] == [0], tag
    assert [step for step, _ in validation["evaluation_loss_vs_iterations"]] == [STEPS_PER_EPOCH]
    assert _session(tmp_path / "7")[1] is None
    assert _scalars(tmp_path / "7") == {}


def test_an_answer_that_is_no_action_names_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"on_epoch_end must answer 'continue', 'stop', 'prune' or 'cancel', "
                                         r"but got 'halt'"):
        run_trial(_assignment(tmp_path, epochs=1), lambda epoch, metrics: "halt")


# -- logs and checkpoints that cannot be written -----------------------------------------------------

def test_a_checkpoint_that_cannot_be_saved_fails_the_trial_as_an_infrastructure_error(tmp_path: Path) -> None:
    lease_folder = tmp_path / "7" / "checkpoint" / lease_folder_name(1)

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> str:
        # After the attempt looked for a checkpoint, before it saves its first: the lease's folder cannot be made.
        lease_folder.parent.mkdir(parents=True, exist_ok=True)
        lease_folder.write_bytes(b"")
        return "continue"

    with pytest.raises(InfrastructureError, match=rf"^cannot save the checkpoint of 1 epoch\(s\) in "
                                                  rf"{re.escape(str(lease_folder))}: FileExistsError") as raised:
        run_trial(_assignment(tmp_path, epochs=3), on_epoch_end)

    assert isinstance(raised.value, RetryableError) and isinstance(raised.value.__cause__, OSError)
    assert _session(tmp_path / "7")[1] == api_pb2.STATUS_FAILURE


def test_tensorboard_logs_that_cannot_be_written_fail_the_trial_as_an_infrastructure_error(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "train").write_bytes(b"")  # where Keras's TensorBoard callback makes its train/ folder
    recorder = _Recorder()

    with pytest.raises(InfrastructureError, match=rf"^cannot write the trial's TensorBoard logs in "
                                                  rf"{re.escape(str(tmp_path / '7'))}: FailedPreconditionError"
                       ) as raised:
        run_trial(_assignment(tmp_path, epochs=2), recorder)

    assert isinstance(raised.value.__cause__, tf.errors.OpError)
    assert recorder.calls == []


def test_a_session_that_cannot_be_written_fails_the_trial_as_an_infrastructure_error(tmp_path: Path) -> None:
    (tmp_path / "7").write_bytes(b"")  # the trial's log folder cannot be made
    assignment = _assignment(tmp_path, epochs=1).model_copy(update={"checkpoint_dir": str(tmp_path / "checkpoint")})

    with pytest.raises(InfrastructureError, match=rf"^cannot write the HParams session to the trial's logs in "
                                                  rf"{re.escape(str(tmp_path / '7'))}: "):
        run_trial(assignment, _Recorder())


def test_a_checkpoint_folder_that_cannot_be_read_fails_the_trial_before_it_trains(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    folder = tmp_path / "file" / "checkpoint"
    recorder = _Recorder()

    with pytest.raises(InfrastructureError, match=rf"^cannot list the checkpoint folder {re.escape(str(folder))}: "
                                                  rf"NotADirectoryError"):
        run_trial(_assignment(tmp_path, epochs=1).model_copy(update={"checkpoint_dir": str(folder)}), recorder)

    assert recorder.calls == []


def test_an_os_error_from_model_code_stays_the_models_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def needs_a_missing_file(hparams: dict[str, Any], info: Any) -> keras.Model:
        raise FileNotFoundError("pretrained.weights.h5")

    _use_model(monkeypatch, needs_a_missing_file)

    with pytest.raises(FileNotFoundError, match="pretrained"):
        run_trial(_assignment(tmp_path, epochs=1), _Recorder())

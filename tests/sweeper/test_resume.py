"""A retried trial resumes from its checkpoint: the schedule goes on, and TensorBoard shows each epoch once.

Each test interrupts a real (tiny) Keras trial after an epoch, the way a worker loses it, then runs it
again as attempt 2 (the next claim, so the next lease token) and compares it with the same trial run
without interruption. However a trial ends, the runner leaves its checkpoint: the worker deletes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import pytest
from tensorboard.plugins.hparams import api_pb2, metadata

from sweeper import RetryableError
from sweeper._spec import EarlyStopping, Objective
from sweeper.training.checkpoints import STATE_FILE, TrialCheckpoint, lease_folder_name
from sweeper.training.runner import run_trial
from test_runner import ABORTED, _assignment, _Recorder, _scalars, _session, _session_groups

pytestmark = pytest.mark.training
EPOCHS = 4


class _ProcessDied(BaseException):
    """A stand-in for the worker process dying: no `except Exception` in the runner sees it."""


class _InterruptAt(_Recorder):
    """Reports like `_Recorder`, but at `epoch` it answers "stop" or raises, as a lost worker would."""

    def __init__(self, epoch: int, how: str):
        super().__init__()
        self._epoch, self._how = epoch, how

    def __call__(self, epoch: int, metrics: dict[str, float]) -> str:
        super().__call__(epoch, metrics)
        if epoch != self._epoch:
            return "continue"
        if self._how == "stop":
            return "stop"
        if self._how == "retryable":
            raise RetryableError("the data service went away")
        raise _ProcessDied()


def _trial(logdir: Path, **hparams: Any) -> Any:
    return _assignment(logdir, epochs=EPOCHS, lr_schedule="exponential", **hparams)


def _retry(assignment: Any, attempt: int = 2) -> Any:
    """The assignment of the trial's next claim: the next attempt, with the next lease token."""
    return assignment.model_copy(update={"attempt": attempt, "lease_token": assignment.lease_token + attempt - 1})


def _epochs_saved(checkpoint_dir: Path) -> int | None:
    resume = TrialCheckpoint(checkpoint_dir).load()
    return resume.epochs_done if resume is not None else None


def _session_starts(trial_dir: Path) -> int:
    # Every session start event, from every file: the accumulator would show only one of several.
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return sum(value.tag == metadata.SESSION_START_INFO_TAG
               for path in trial_dir.glob("*tfevents*") for event in EventFileLoader(str(path)).Load()
               for value in event.summary.value)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, float]]]:
    logdir = tmp_path_factory.mktemp("uninterrupted")
    run_trial(_trial(logdir), _Recorder())
    return _scalars(logdir / "7" / "train")


@pytest.mark.parametrize(("how", "resumes_at"), [
    ("stop", 2),        # a "stop" answer after epoch 1: that epoch is saved, the retry starts at 2
    ("retryable", 1),   # an error while reporting epoch 1: its checkpoint was not saved yet
    ("died", 1),        # the process dies there: the same, and the session has no end
])
def test_a_retried_trial_continues_the_schedule_and_logs_each_epoch_once(
        tmp_path: Path, uninterrupted: dict[str, list[tuple[int, float]]], how: str, resumes_at: int) -> None:
    first = _InterruptAt(1, how)
    if how == "stop":
        assert run_trial(_trial(tmp_path), first).stopped_by == "stop"
    else:
        with pytest.raises((RetryableError, _ProcessDied)):
            run_trial(_trial(tmp_path), first)
    first_state = tmp_path / "7" / "checkpoint" / lease_folder_name(1) / STATE_FILE
    assert first_state.is_file()
    saved_by_first = first_state.read_bytes()

    second = _Recorder()
    result = run_trial(_retry(_trial(tmp_path)), second)

    # Only the epochs this attempt trained are reported; the result counts all of them.
    assert [epoch for epoch, _ in second.calls] == list(range(resumes_at, EPOCHS))
    assert (result.epochs_run, result.resumed_from, result.stopped_by) == (EPOCHS, resumes_at, None)
    train, validation = _scalars(tmp_path / "7" / "train"), _scalars(tmp_path / "7" / "validation")
    assert [step for step, _ in train["epoch_learning_rate"]] == list(range(EPOCHS))
    assert [value for _, value in train["epoch_learning_rate"]] == \
        pytest.approx([value for _, value in uninterrupted["epoch_learning_rate"]], rel=1e-6)
    for scalars in (train, validation):
        assert [step for step, _ in scalars["epoch_loss"]] == list(range(EPOCHS))
        assert [step for step, _ in scalars["epoch_accuracy"]] == list(range(EPOCHS))
    # Keras's evaluation scalars count optimizer steps: one per validation pass, none repeated.
    evaluation = [step for step, _ in validation["evaluation_loss_vs_iterations"]]
    assert evaluation == sorted(set(evaluation)) and len(evaluation) == EPOCHS
    assert result.metrics["learning_rate"] == pytest.approx(uninterrupted["epoch_learning_rate"][-1][1], rel=1e-6)

    assert _session_starts(tmp_path / "7") == 1
    assert _session(tmp_path / "7")[1] == api_pb2.STATUS_SUCCESS
    assert _scalars(tmp_path / "7") == {"val_accuracy": [(EPOCHS - 1, pytest.approx(result.metrics["val_accuracy"]))],
                                        "num_params": [(EPOCHS - 1, result.metrics["num_params"])]}
    (group,) = _session_groups(tmp_path)
    assert [session.status for session in group.sessions] == [api_pb2.STATUS_SUCCESS]
    # Both leases' saves stay, the first's untouched by the second: the worker deletes the checkpoint.
    assert first_state.read_bytes() == saved_by_first
    assert _epochs_saved(tmp_path / "7" / "checkpoint") == EPOCHS - 1


def test_the_resumed_attempt_starts_from_the_saved_weights(tmp_path: Path) -> None:
    fresh = _Recorder()
    run_trial(_assignment(tmp_path, trial_id=1, epochs=1), fresh)
    run_trial(_assignment(tmp_path, trial_id=2, epochs=3), _InterruptAt(1, "stop"))

    resumed = _Recorder()
    run_trial(_retry(_assignment(tmp_path, trial_id=2, epochs=3)), resumed)

    # Two epochs in, the model is far better than a new one after its first epoch.
    [(epoch, metrics)] = resumed.calls
    assert epoch == 2
    assert metrics["loss"] < 0.8 * fresh.calls[0][1]["loss"]


def test_the_objective_is_judged_over_the_epochs_of_every_attempt(tmp_path: Path) -> None:
    # The decaying learning rate is highest at epoch 0, which only the first attempt trained.
    objective = Objective(metric="learning_rate", goal="maximize", epoch="best")
    assignment = _trial(tmp_path).model_copy(update={"objective": objective})
    first = _InterruptAt(1, "stop")
    run_trial(assignment, first)

    result = run_trial(_retry(assignment), _Recorder())

    assert (result.epochs_run, result.objective_epoch) == (EPOCHS, 0)
    assert result.metrics == first.calls[0][1]
    assert _scalars(tmp_path / "7") == {"learning_rate": [(0, pytest.approx(result.objective))],
                                        "num_params": [(0, result.metrics["num_params"])]}


def test_epochs_restored_from_a_checkpoint_without_num_params_get_the_models_count(tmp_path: Path) -> None:
    # As a checkpoint saved before epochs reported the parameter count: its history lacks it.
    objective = Objective(metric="learning_rate", goal="maximize", epoch="best")
    assignment = _trial(tmp_path).model_copy(update={"objective": objective})
    run_trial(assignment, _InterruptAt(1, "stop"))
    state_file = tmp_path / "7" / "checkpoint" / lease_folder_name(1) / STATE_FILE
    state = json.loads(state_file.read_text())
    state["history"] = [{name: value for name, value in metrics.items() if name != "num_params"}
                        for metrics in state["history"]]
    state_file.write_text(json.dumps(state))
    second = _Recorder()

    result = run_trial(_retry(assignment), second)

    # The objective epoch is 0, one the retry restored rather than trained.
    assert result.objective_epoch == 0
    assert result.metrics["num_params"] == second.calls[0][1]["num_params"] > 0
    assert _scalars(tmp_path / "7")["num_params"] == [(0, result.metrics["num_params"])]


def test_a_stopped_trial_keeps_its_checkpoint_and_its_session_stays_open(tmp_path: Path) -> None:
    result = run_trial(_trial(tmp_path), _InterruptAt(0, "stop"))

    assert result.stopped_by == "stop"
    resume = TrialCheckpoint(tmp_path / "7" / "checkpoint").load()
    assert resume is not None and resume.epochs_done == 1 and len(resume.history) == 1
    assert _session(tmp_path / "7")[1] is None


def test_a_stop_answer_after_the_last_epoch_completes_the_trial(tmp_path: Path) -> None:
    result = run_trial(_assignment(tmp_path, epochs=2), _InterruptAt(1, "stop"))

    assert (result.epochs_run, result.stopped_by) == (2, None)
    assert _session(tmp_path / "7")[1] == api_pb2.STATUS_SUCCESS
    assert _epochs_saved(tmp_path / "7" / "checkpoint") == 1  # the last epoch is not saved


@pytest.mark.parametrize("answer", ["prune", "cancel"])
def test_a_pruned_or_cancelled_trial_leaves_its_checkpoint_for_the_worker_to_delete(
        tmp_path: Path, answer: str) -> None:
    result = run_trial(_trial(tmp_path), _Recorder(answer, from_epoch=1))

    assert result.stopped_by == answer
    assert _session(tmp_path / "7")[1] == ABORTED
    assert _epochs_saved(tmp_path / "7" / "checkpoint") == 1  # epoch 1 ended the trial: not saved


def test_a_trial_that_fails_for_good_leaves_its_checkpoint_for_the_worker_to_delete(tmp_path: Path) -> None:
    run_trial(_trial(tmp_path), _InterruptAt(0, "stop"))

    def broken(epoch: int, metrics: dict[str, float]) -> str:
        raise ValueError("a bug in the reporting code")

    with pytest.raises(ValueError, match="a bug"):
        run_trial(_retry(_trial(tmp_path)), broken)
    assert _epochs_saved(tmp_path / "7" / "checkpoint") == 1


def test_the_checkpoint_goes_where_the_assignment_says(tmp_path: Path) -> None:
    folder = tmp_path / "elsewhere" / "7"
    assignment = _trial(tmp_path).model_copy(update={"checkpoint_dir": str(folder), "lease_token": 5})

    run_trial(assignment, _InterruptAt(0, "stop"))

    assert (folder / "lease-000000005" / STATE_FILE).is_file()
    assert not (tmp_path / "7" / "checkpoint").exists()


def test_an_unreadable_checkpoint_state_is_left_in_place_and_the_trial_starts_over(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_trial(_trial(tmp_path), _InterruptAt(1, "stop"))
    state = tmp_path / "7" / "checkpoint" / lease_folder_name(1) / STATE_FILE
    state.write_text("{not json")

    recorder = _Recorder()
    result = run_trial(_retry(_trial(tmp_path)), recorder)

    assert f"{state.parent}: {STATE_FILE} is not a checkpoint state" in caplog.text
    assert state.read_text() == "{not json"  # another lease's file: skipped, never deleted
    assert [epoch for epoch, _ in recorder.calls] == list(range(EPOCHS))
    assert result.resumed_from == 0
    assert [step for step, _ in _scalars(tmp_path / "7" / "train")["epoch_loss"]] == list(range(EPOCHS))
    assert _session_starts(tmp_path / "7") == 1


def test_weights_that_do_not_fit_the_model_fail_the_attempt_as_retryable_and_start_over(tmp_path: Path) -> None:
    first = _assignment(tmp_path, epochs=3, units=16)
    run_trial(first, _InterruptAt(0, "stop"))
    saved = sorted(path.name for path in (tmp_path / "7" / "checkpoint" / lease_folder_name(1)).iterdir())

    # The same trial, but its code changed between attempts: the saved weights no longer fit.
    changed = first.model_copy(update={"hparams": {**first.hparams, "units": 32}})
    with pytest.raises(RetryableError, match="cannot restore the weights saved after epoch 0.*starts over"):
        run_trial(_retry(changed, attempt=2), _Recorder())
    # Set aside by the failed lease's own record, not by deleting the lease that saved them.
    assert sorted(path.name for path in (tmp_path / "7" / "checkpoint" / lease_folder_name(1)).iterdir()) == saved

    result = run_trial(_retry(changed, attempt=3), _Recorder())
    assert (result.epochs_run, result.resumed_from) == (3, 0)


def test_a_checkpoint_of_every_epoch_completes_the_trial_without_training(tmp_path: Path) -> None:
    # As when the worker died after saving the last epoch, before the server heard of it: here the
    # checkpoint has 2 epochs and the trial only 2.
    run_trial(_assignment(tmp_path, epochs=3), _InterruptAt(1, "stop"))

    recorder = _Recorder()
    result = run_trial(_retry(_assignment(tmp_path, epochs=2)), recorder)

    assert recorder.calls == []
    assert (result.epochs_run, result.resumed_from, result.stopped_by) == (2, 2, None)
    assert [step for step, _ in _scalars(tmp_path / "7" / "train")["epoch_loss"]] == [0, 1]
    assert _session(tmp_path / "7")[1] == api_pb2.STATUS_SUCCESS
    assert _epochs_saved(tmp_path / "7" / "checkpoint") == 2


class _SavedEpochs(keras.callbacks.Callback):
    """Runs after the runner's own callbacks: after each epoch, how many epochs the checkpoint holds."""

    def __init__(self, folder: Path):
        super().__init__()
        self.checkpoint = TrialCheckpoint(folder)
        self.saved: list[int | None] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        resume = self.checkpoint.load()
        self.saved.append(resume.epochs_done if resume is not None else None)


def test_the_epoch_a_trial_ends_with_saves_no_checkpoint(tmp_path: Path) -> None:
    # The worker deletes the checkpoint once the trial completes; saving it would only delay the next trial.
    saved = _SavedEpochs(tmp_path / "7" / "checkpoint")
    run_trial(_assignment(tmp_path, epochs=3), _Recorder(), callbacks=[saved])
    assert saved.saved == [1, 2, 2]


def test_the_epoch_early_stopping_ends_with_saves_no_checkpoint(tmp_path: Path) -> None:
    assignment = _assignment(tmp_path, epochs=6)
    assignment = assignment.model_copy(update={"train": assignment.train.model_copy(update={
        "early_stopping": EarlyStopping(monitor="learning_rate", patience=1)})})
    saved = _SavedEpochs(tmp_path / "7" / "checkpoint")
    result = run_trial(assignment, _Recorder(), callbacks=[saved])
    # A constant learning rate never improves: early stopping ends training after epoch 1.
    assert (result.stopped_by, result.epochs_run) == ("early_stopping", 2)
    assert saved.saved == [1, 1]


def test_a_stop_answer_saves_the_epoch_to_hand_back(tmp_path: Path) -> None:
    saved = _SavedEpochs(tmp_path / "7" / "checkpoint")
    run_trial(_assignment(tmp_path, epochs=3), _InterruptAt(1, "stop"), callbacks=[saved])
    assert saved.saved == [1, 2]

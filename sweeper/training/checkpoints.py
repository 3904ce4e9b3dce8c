"""A trial's checkpoint: what a retried trial resumes from.

Like Keras's `BackupAndRestore`, the model's weights and its optimizer's state are saved at the end
of every epoch, so an attempt interrupted anywhere (a crash, a shutdown, a lost server) is resumed
by the next one from its last finished epoch. The optimizer's state holds its step count, so a
learning-rate schedule goes on where it was, and the rate a ReduceLROnPlateau has lowered stays low.

Two things differ from `BackupAndRestore`. Each save is atomic: the weights go to a new file, then a
small state file naming it is renamed into place, so a process killed in the middle of a save leaves
the previous checkpoint whole. And the state holds every finished epoch's metrics, so a resumed trial
still judges its objective (its best epoch, say) over all of its epochs.

The folder is local or in an object store (`sweeper.log_location`), and its files are handled through
`sweeper._log_files`; Keras saves and loads weights at a URL itself (through a local copy). No
TensorFlow here for a local folder: the model is only asked to `save_weights` and `load_weights`, so
the worker agent and supervisor can find and delete a trial's checkpoint without loading TensorFlow
(for a URL, gfile loads it).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from sweeper import _log_files, log_location
from sweeper._errors import RetryableError

__all__ = ["CheckpointError", "Resume", "TrialCheckpoint", "checkpoint_folder"]

STATE_FILE = "state.json"
_FORMAT = 1
# Keras refuses to save weights to a file whose name does not end so.
_WEIGHTS_SUFFIX = ".weights.h5"


class _HasAssignmentPaths(Protocol):
    logdir: str
    checkpoint_dir: str


class _Model(Protocol):
    optimizer: Any

    @property
    def trainable_variables(self) -> list[Any]: ...

    def save_weights(self, filepath: str) -> None: ...

    def load_weights(self, filepath: str) -> None: ...


class CheckpointError(RetryableError):
    """A trial's checkpoint cannot be read or restored. It is deleted, so the trial starts over.

    Unreadable, the runner starts over at once; found not to fit the model (its code changed), the
    attempt fails as retryable, since its logs were already rewound to the checkpoint's epoch.
    """


def checkpoint_folder(assignment: _HasAssignmentPaths) -> str:
    """The assignment's checkpoint folder; servers from before checkpoints name none: `<logdir>/checkpoint`."""
    if assignment.checkpoint_dir:
        return assignment.checkpoint_dir
    return log_location.checkpoint_dir(assignment.logdir)


@dataclass(frozen=True)
class Resume:
    """Where a trial goes on from: after `epochs_done` epochs, with their metrics and saved weights."""

    epochs_done: int
    """The number of finished epochs, which is also the index of the first epoch to train."""
    history: list[dict[str, float]]
    """The metrics of each finished epoch, in order (as the runner's epoch reporter collected them)."""
    weights: str
    """The saved weights: a file in the checkpoint folder, a path or a URL."""


class TrialCheckpoint:
    """The checkpoint files of one trial in their folder (created on the first save)."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = os.fspath(folder)

    @property
    def state_file(self) -> str:
        return log_location.join(self.folder, STATE_FILE)

    def load(self) -> Resume | None:
        """What the last finished epoch saved, or None when no epoch was saved yet.

        Raises CheckpointError (after deleting the checkpoint) when the state is unreadable.
        """
        try:
            text = _log_files.read_bytes(self.state_file).decode()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise self._broken(f"cannot read {self.state_file}: {error}") from error
        try:
            state = json.loads(text)
            epochs_done, weights, history = state["epochs_done"], state["weights"], state["history"]
        except (ValueError, KeyError, TypeError) as error:  # UnicodeDecodeError is a ValueError
            raise self._broken(f"{self.state_file} is not a checkpoint state: {error}") from error
        if state.get("format") != _FORMAT or not isinstance(epochs_done, int) or not isinstance(history, list) \
                or len(history) != epochs_done or not isinstance(weights, str) or "/" in weights:
            raise self._broken(f"{self.state_file} is not a format-{_FORMAT} checkpoint state with one history "
                               f"entry per finished epoch")
        path = log_location.join(self.folder, weights)
        if not _log_files.exists(path):
            raise self._broken(f"{self.state_file} names weights {weights}, which are missing")
        return Resume(epochs_done=epochs_done, history=[dict(metrics) for metrics in history], weights=path)

    def save(self, model: _Model, history: list[dict[str, float]]) -> None:
        """Save the model (with its optimizer) after `len(history)` finished epochs, replacing the previous save."""
        _log_files.makedirs(self.folder)
        epochs_done = len(history)
        weights = f"epochs-{epochs_done:06d}{_WEIGHTS_SUFFIX}"
        # Written whole under a temporary name, then renamed: a save cut short never looks finished.
        partial = log_location.join(self.folder, f"partial-{uuid.uuid4().hex}{_WEIGHTS_SUFFIX}")
        try:
            model.save_weights(partial)
            _log_files.replace(partial, log_location.join(self.folder, weights))
        except BaseException:
            _log_files.remove(partial)  # only when it was not renamed: in an object store each call is a request
            raise
        state = {"format": _FORMAT, "epochs_done": epochs_done, "weights": weights, "history": history}
        _log_files.write_atomically(self.state_file, json.dumps(state).encode())
        # Only now is the previous save unneeded: until the rename above, the state still named it.
        for path in _log_files.glob(log_location.join(self.folder, f"*{_WEIGHTS_SUFFIX}")):
            if os.path.basename(path) != weights:  # a URL's last part too
                _log_files.remove(path)

    def restore(self, model: _Model, resume: Resume) -> None:
        """Load the saved weights and optimizer state into `model`, which must be built and compiled.

        Raises CheckpointError (after deleting the checkpoint) when they do not fit the model.
        """
        try:
            optimizer = model.optimizer
            if optimizer is not None and not optimizer.built:
                # Keras loads an optimizer's state only into an optimizer that has its variables.
                optimizer.build(model.trainable_variables)
            model.load_weights(resume.weights)
        except Exception as error:
            # Keras's message can hold whole weight arrays: its first line says enough.
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            raise self._broken(f"cannot restore the weights saved after epoch {resume.epochs_done - 1} "
                               f"({resume.weights}): {type(error).__name__}: {reason}") from error

    def delete(self) -> None:
        """Remove the checkpoint: the trial finished for good, or its checkpoint is no use."""
        _log_files.rmtree(self.folder)

    def _broken(self, problem: str) -> CheckpointError:
        self.delete()
        return CheckpointError(f"{problem}; the checkpoint was deleted, so the trial starts over")

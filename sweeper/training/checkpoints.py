"""A trial's checkpoint: what a retried trial resumes from, kept per lease so two holders never collide.

Like Keras's `BackupAndRestore`, the model's weights and its optimizer's state are saved at the end
of every epoch, so an attempt interrupted anywhere (a crash, a shutdown, a lost server) is resumed
by the next one from its last finished epoch. The optimizer's state holds its step count, so a
learning-rate schedule goes on where it was, and the rate a ReduceLROnPlateau has lowered stays low.

Three things differ from `BackupAndRestore`:
- Each claim of a trial (its lease token) saves into a folder of its own under the trial's checkpoint
  folder, `<root>/lease-000000007/`, and reads but never writes or deletes another lease's. A process
  still training a trial whose lease another worker was handed (a long pause, a partitioned host) can
  therefore never delete or overwrite the files the new holder resumes from or writes. A new lease
  resumes from the newest state of its own or an earlier lease.
- Each save is atomic: the weights go to a new file, then a small state file naming it is renamed
  into place, so a process killed in the middle of a save leaves the previous checkpoint whole. Only
  then is the one weights file that the lease's previous state named deleted: nothing else.
- The state holds every finished epoch's metrics, so a resumed trial still judges its objective (its
  best epoch, say) over all of its epochs.

The folder is local or in an object store (`sweeper.log_location`), and its files are handled through
`sweeper._log_files`; Keras saves and loads weights at a URL itself (through a local copy). No
TensorFlow here for a local folder: the model is only asked to `save_weights` and `load_weights`, so
the worker agent and supervisor can delete a trial's checkpoint without loading TensorFlow (for a URL,
gfile loads it). Failing to read or write the files raises `InfrastructureError`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from sweeper import _log_files, log_location
from sweeper._errors import RetryableError

__all__ = ["CheckpointError", "Resume", "TrialCheckpoint", "checkpoint_folder", "lease_folder_name"]

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
_FORMAT = 1
# Keras refuses to save weights to a file whose name does not end so.
_WEIGHTS_SUFFIX = ".weights.h5"
_LEASE_FOLDER = re.compile(r"lease-(\d+)")


class _HasAssignmentPaths(Protocol):
    logdir: str
    checkpoint_dir: str


class _HasLease(_HasAssignmentPaths, Protocol):
    lease_token: int


class _Model(Protocol):
    optimizer: Any

    @property
    def trainable_variables(self) -> list[Any]: ...

    def save_weights(self, filepath: str) -> None: ...

    def load_weights(self, filepath: str) -> None: ...


class CheckpointError(RetryableError):
    """A trial's saved weights cannot be restored into its model, so the attempt fails and is retried.

    When they do not fit the model (its code changed), the lease records that the trial starts over, so
    the retry trains from scratch; when they vanished while being restored, the retry resumes again.
    Either way the attempt fails, since its logs were already rewound to the checkpoint's epoch.
    """


def checkpoint_folder(assignment: _HasAssignmentPaths) -> str:
    """The assignment's checkpoint folder; servers from before checkpoints name none: `<logdir>/checkpoint`."""
    if assignment.checkpoint_dir:
        return assignment.checkpoint_dir
    return log_location.checkpoint_dir(assignment.logdir)


def lease_folder_name(lease_token: int) -> str:
    """The name of the sub-folder that the lease `lease_token` saves into, under the checkpoint folder."""
    if isinstance(lease_token, bool) or not isinstance(lease_token, int) or lease_token < 1:
        raise ValueError(f"a lease token must be an int >= 1, but got {lease_token!r}")
    return f"lease-{lease_token:09d}"


@dataclass(frozen=True)
class Resume:
    """Where a trial goes on from: after `epochs_done` epochs, with their metrics and saved weights."""

    epochs_done: int
    """The number of finished epochs, which is also the index of the first epoch to train."""
    history: list[dict[str, float]]
    """The metrics of each finished epoch, in order (as the runner's epoch reporter collected them)."""
    weights: str
    """The saved weights: a file in the saving lease's folder, a path or a URL."""
    lease_token: int
    """The lease that saved them."""


@dataclass(frozen=True)
class _State:
    epochs_done: int
    weights: str
    """The weights file's name in the lease's folder; "" when the lease set the trial to start over."""
    history: list[dict[str, float]]


class TrialCheckpoint:
    """The checkpoint of one trial: a folder (`root`) holding one sub-folder per lease that saved.

    `lease_token` is the claim this process holds: it saves into its own lease's folder and resumes
    from the newest state of that lease or an earlier one. Without one, the checkpoint can be read
    (the newest state of any lease) and deleted, but not saved to.
    """

    def __init__(self, root: str | os.PathLike[str], lease_token: int | None = None):
        self.root = os.fspath(root)
        self.lease_token = lease_token
        if lease_token is not None:
            lease_folder_name(lease_token)  # checked now, not at the first save

    @classmethod
    def for_assignment(cls, assignment: _HasLease) -> TrialCheckpoint:
        """The checkpoint of the assignment's trial, saved to by the assignment's lease."""
        return cls(checkpoint_folder(assignment), assignment.lease_token)

    @property
    def lease_folder(self) -> str:
        """The folder this lease saves into."""
        if self.lease_token is None:
            raise ValueError(f"the checkpoint in {self.root} was opened without a lease token, so it cannot be "
                             f"saved to: give the lease token of the trial's claim")
        return self._folder_of(self.lease_token)

    @property
    def state_file(self) -> str:
        """This lease's state file."""
        return log_location.join(self.lease_folder, STATE_FILE)

    def load(self) -> Resume | None:
        """The newest saved state of this lease or an earlier one, or None when the trial starts from scratch.

        Leases are tried newest first: one with no state (it ended before its first save) or an unreadable
        one (logged, and left in place) gives way to the one before it. A lease that set the trial to
        start over (see `restore`) ends the search: None. A later lease's state is never used: it is the
        trial's holder now, and this process only a stale one.
        """
        for token in self._lease_tokens():
            if self.lease_token is not None and token > self.lease_token:
                continue
            folder = self._folder_of(token)
            with _log_files.io_failures(f"read the checkpoint state in {folder}"):
                state = self._read_state(folder)
                if isinstance(state, str):
                    logger.warning("%s: %s; resuming from an earlier lease's checkpoint, if any", folder, state)
                    continue
                if state is None:
                    continue
                if state.epochs_done == 0:
                    return None
                weights = log_location.join(folder, state.weights)
                if not _log_files.exists(weights):
                    logger.warning("%s: the state names weights %s, which are missing; resuming from an earlier "
                                   "lease's checkpoint, if any", folder, state.weights)
                    continue
            return Resume(epochs_done=state.epochs_done, history=state.history, weights=weights, lease_token=token)
        return None

    def save(self, model: _Model, history: list[dict[str, float]]) -> None:
        """Save the model (with its optimizer) after `len(history)` finished epochs into this lease's folder,
        replacing this lease's previous save. Raises InfrastructureError when the files cannot be written."""
        folder = self.lease_folder
        epochs_done = len(history)
        weights = f"epochs-{epochs_done:06d}{_WEIGHTS_SUFFIX}"
        with _log_files.io_failures(f"save the checkpoint of {epochs_done} epoch(s) in {folder}"):
            _log_files.makedirs(folder)
            # Written whole under a temporary name, then renamed: a save cut short never looks finished.
            partial = log_location.join(folder, f"partial-{uuid.uuid4().hex}{_WEIGHTS_SUFFIX}")
            try:
                model.save_weights(partial)
                _log_files.replace(partial, log_location.join(folder, weights))
            except BaseException:
                # Only when it was not renamed (in an object store each call is a request); a failure to
                # clean up must not hide the failure to save.
                with contextlib.suppress(OSError):
                    _log_files.remove(partial)
                raise
            self._replace_state(_State(epochs_done=epochs_done, weights=weights, history=history))

    def restore(self, model: _Model, resume: Resume) -> None:
        """Load the saved weights and optimizer state into `model`, which must be built and compiled.

        Raises CheckpointError when they do not fit the model, after recording in this lease's folder that
        the trial starts over (when this process holds a lease): the retry must not meet them again.
        """
        try:
            optimizer = model.optimizer
            if optimizer is not None and not optimizer.built:
                # Keras loads an optimizer's state only into an optimizer that has its variables.
                optimizer.build(model.trainable_variables)
            model.load_weights(resume.weights)
        except Exception as error:
            with _log_files.io_failures(f"read the checkpoint weights {resume.weights}"):
                vanished = not _log_files.exists(resume.weights)
            if vanished:
                # A process still saving for the lease that wrote them replaced them meanwhile: its newer
                # state is there for the retry to resume from.
                raise CheckpointError(f"the weights saved after epoch {resume.epochs_done - 1} "
                                      f"({resume.weights}) vanished while being restored; the trial resumes "
                                      f"on its next attempt") from error
            # Keras's message can hold whole weight arrays: its first line says enough.
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            problem = (f"cannot restore the weights saved after epoch {resume.epochs_done - 1} ({resume.weights}): "
                       f"{type(error).__name__}: {reason}")
            if self.lease_token is None:
                raise CheckpointError(problem) from error
            with _log_files.io_failures(f"set aside the checkpoint in {self.lease_folder}"):
                _log_files.makedirs(self.lease_folder)
                self._replace_state(_State(epochs_done=0, weights="", history=[]))
            raise CheckpointError(f"{problem}; they are set aside, so the trial starts over") from error

    def delete(self) -> None:
        """Remove the whole checkpoint, every lease's: the trial finished for good."""
        _log_files.rmtree(self.root)

    # -- internals --------------------------------------------------------------------------------

    def _folder_of(self, lease_token: int) -> str:
        return log_location.join(self.root, lease_folder_name(lease_token))

    def _lease_tokens(self) -> list[int]:
        """The tokens of the leases with a folder here, newest first."""
        with _log_files.io_failures(f"list the checkpoint folder {self.root}"):
            names = _log_files.listdir(self.root)
        return sorted((int(match[1]) for match in map(_LEASE_FOLDER.fullmatch, names) if match), reverse=True)

    def _replace_state(self, state: _State) -> None:
        """Make `state` this lease's state, then delete the weights its previous state named (they are
        this lease's own, and no longer named): never any other file."""
        previous = self._read_state(self.lease_folder)
        data = {"format": _FORMAT, "epochs_done": state.epochs_done, "weights": state.weights,
                "history": state.history}
        _log_files.write_atomically(self.state_file, json.dumps(data).encode())
        if isinstance(previous, _State) and previous.weights and previous.weights != state.weights:
            _log_files.remove(log_location.join(self.lease_folder, previous.weights))

    @staticmethod
    def _read_state(folder: str) -> _State | str | None:
        """The state in `folder`; None when it has none, or what is wrong with it when it is unreadable."""
        path = log_location.join(folder, STATE_FILE)
        try:
            text = _log_files.read_bytes(path).decode()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as error:
            return f"{STATE_FILE} is not a checkpoint state: {error}"
        try:
            state = json.loads(text)
            epochs_done, weights, history = state["epochs_done"], state["weights"], state["history"]
        except (ValueError, KeyError, TypeError) as error:
            return f"{STATE_FILE} is not a checkpoint state: {error}"
        if state.get("format") != _FORMAT or not isinstance(epochs_done, int) or epochs_done < 0 \
                or not isinstance(history, list) or len(history) != epochs_done \
                or not all(isinstance(metrics, dict) for metrics in history) \
                or not isinstance(weights, str) or "/" in weights or (weights == "") != (epochs_done == 0):
            return (f"{STATE_FILE} is not a format-{_FORMAT} checkpoint state with one history entry per finished "
                    f"epoch and the name of its weights")
        return _State(epochs_done=epochs_done, weights=weights, history=[dict(metrics) for metrics in history])

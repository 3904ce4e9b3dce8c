"""Population Based Training in the runner: a member's snapshots, its exploits, and a session per segment.

The server decides (which member copies which, with which hparams); the runner only carries it out:
- At the end of every boundary epoch (`is_boundary`), before the epoch is reported, `Snapshots` saves the
  member's weights and optimizer state to `snapshot_path(pbt.snapshot_dir, epoch)`: the file other members
  may be told to copy. It is written whole under a temporary name, then linked into place, and never
  written again: a retried member that trains the epoch again leaves the first one.
- An exploit answer names a donor's snapshot and the segment that starts at the next epoch. The runner
  rebuilds the model in the running process from the segment's hparams (so dropout, or any hparam the
  model builder reads, takes effect), loads the donor's weights and optimizer state into it from that
  file (the donor's, never the member's own), sets the segment's learning rate (see
  `load_donor_snapshot`) and trains on. A snapshot that does not fit fails the trial with
  `SnapshotError`, naming the file and, where the donor's hparams say, the hparam at fault.
- A retried member resumes with the hparams of the segment in force at its first epoch to train
  (`segment_at`): the checkpoint saved after an exploit holds the donor's weights already.
- TensorBoard: the member's train/ and validation/ curves stay one run; its HParams sessions are one per
  segment (`MemberSessions`), in `<trial folder>/segment-01`, ..., with `member` and `parent` beside the
  segment's hparams and the objective at the segment's last epoch.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import keras

from sweeper import _log_files, log_location
from sweeper._errors import InfrastructureError, SweeperError
from sweeper.hparams_log import NUM_PARAMS, PBT_MEMBER, PBT_PARENT, PRUNED_AT_EPOCH, SessionStatus, TrialSession, \
    segment_dir, segment_end_columns
from sweeper.messages import Assignment, Exploit, PbtMember, PbtSegment, snapshot_path
from sweeper.training.schedules import build_learning_rate

__all__ = ["MemberSessions", "SnapshotError", "Snapshots", "check_exploit", "is_boundary", "load_donor_snapshot",
           "save_snapshot", "segment_at", "snapshot_hparams"]

logger = logging.getLogger(__name__)

SNAPSHOT_HPARAMS = "sweeper_hparams"
"""The attribute of a snapshot file (HDF5, beside Keras's groups) holding the hparams that trained it, as JSON:
what names the hparam at fault when a snapshot does not fit the model that an exploit builds."""
# Keras only warns, and loads nothing of the optimizer, when its variables do not match the file's.
_OPTIMIZER_SKIPPED = r"Skipping variable loading for optimizer"
# Hparams that decide which variables the optimizer keeps (a schedule's rate is no variable, a constant's is).
_OPTIMIZER_HPARAMS = ("optimizer", "lr_schedule")


class SnapshotError(SweeperError):
    """An exploit's donor snapshot cannot be loaded (missing, or made for another model): the trial fails.

    Not retried: a retry trains the epoch again, reports it again, and the server answers with the same
    stored exploit, which would fail the same way.
    """


def is_boundary(interval_epochs: int, epoch: int, epochs: int) -> bool:
    """Whether epoch `epoch` (from 0) ends an interval before the member's last epoch: interval-1, 2*interval-1, ..."""
    return (epoch + 1) % interval_epochs == 0 and epoch + 1 < epochs


def segment_at(pbt: PbtMember, epoch: int) -> PbtSegment:
    """The segment in force at `epoch`: the last that starts at or before it."""
    in_force = [segment for segment in pbt.segments if segment.start_epoch <= epoch]
    if not in_force:
        raise ValueError(f"the member's lineage starts at epoch {pbt.segments[0].start_epoch}, so no segment is in "
                         f"force at epoch {epoch}: its first segment must start at epoch 0")
    return in_force[-1]


def check_exploit(pbt: PbtMember | None, exploit: Exploit, current: PbtSegment | None, epoch: int,
                  epochs: int) -> None:
    """ValueError, naming the broken rule, when `exploit` cannot follow epoch `epoch` of segment `current`."""
    if pbt is None or current is None:
        raise ValueError(f"on_epoch_end answered exploit after epoch {epoch}, but the trial is no Population Based "
                         f"Training member (its assignment has no pbt)")
    segment = exploit.segment
    if segment.start_epoch != epoch + 1:
        raise ValueError(f"an exploit after epoch {epoch} must start its segment at epoch {epoch + 1}, but got "
                         f"start_epoch={segment.start_epoch}")
    if epoch + 1 >= epochs:
        raise ValueError(f"an exploit after epoch {epoch} leaves no epoch to train: the trial has {epochs}")
    if segment.segment != current.segment + 1:
        raise ValueError(f"an exploit during segment {current.segment} must start segment {current.segment + 1}, "
                         f"but got segment={segment.segment}")


# -- snapshots ---------------------------------------------------------------------------------------

def save_snapshot(model: keras.Model, target: str, hparams: Mapping[str, Any]) -> bool:
    """Save the model's weights and optimizer state to `target` (a path or URL ending `.weights.h5`) with
    `hparams` as an attribute; False, writing nothing, when `target` exists: a snapshot is immutable.

    Written under a temporary name in the same folder and linked into place (see `_log_files.rename_new`),
    so no reader meets half a file and two writers never replace each other's. InfrastructureError when
    the file cannot be written.
    """
    with _log_files.io_failures(f"save the PBT snapshot {target}"):
        if _log_files.exists(target):
            logger.info("PBT snapshot %s exists already; it is kept as it is", target)
            return False
        folder = log_location.parent(target)
        _log_files.makedirs(folder)
        # No "tfevents" in the name (TensorBoard ignores it); Keras wants the suffix.
        partial = log_location.join(folder, f".partial-{uuid.uuid4().hex}.weights.h5")
        try:
            if log_location.is_url(target):
                with tempfile.TemporaryDirectory() as scratch:
                    local = os.path.join(scratch, "snapshot.weights.h5")
                    _save_with_hparams(model, local, hparams)
                    with open(local, "rb") as source, _log_files.open_file(partial, "wb") as copy:
                        copy.write(source.read())
            else:
                _save_with_hparams(model, partial, hparams)
            return _log_files.rename_new(partial, target)
        except BaseException:
            _log_files.remove(partial)
            raise


def _save_with_hparams(model: keras.Model, local_path: str, hparams: Mapping[str, Any]) -> None:
    import h5py  # Keras's own dependency for .weights.h5

    model.save_weights(local_path)
    with h5py.File(local_path, "a") as file:
        file.attrs[SNAPSHOT_HPARAMS] = json.dumps(dict(hparams), sort_keys=True, default=str)


def snapshot_hparams(path: str) -> dict[str, Any] | None:
    """The hparams a snapshot was trained with, as `save_snapshot` recorded them; None when it has none or
    cannot be read."""
    import h5py

    try:
        with tempfile.TemporaryDirectory() as scratch:
            local = path
            if log_location.is_url(path):
                local = os.path.join(scratch, "snapshot.weights.h5")
                with open(local, "wb") as copy:
                    copy.write(_log_files.read_bytes(path))
            with h5py.File(local, "r") as file:
                text = file.attrs.get(SNAPSHOT_HPARAMS)
        hparams = json.loads(text) if text is not None else None
    except (OSError, ValueError) as error:
        logger.debug("cannot read the hparams of snapshot %s: %s", path, error)
        return None
    return hparams if isinstance(hparams, dict) else None


class Snapshots(keras.callbacks.Callback):
    """Saves the member's snapshot at the end of each boundary epoch; it must come before the epoch's report,
    since the server may tell another member to copy it in the answer to that report."""

    def __init__(self, pbt: PbtMember, epochs: int, hparams: Mapping[str, Any]):
        super().__init__()
        self._pbt, self._epochs, self._hparams = pbt, epochs, dict(hparams)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if is_boundary(self._pbt.interval_epochs, epoch, self._epochs):
            save_snapshot(self.model, snapshot_path(self._pbt.snapshot_dir, epoch), self._hparams)


# -- exploits ----------------------------------------------------------------------------------------

def load_donor_snapshot(model: keras.Model, exploit: Exploit, epochs: int, steps_per_epoch: int,
                        architecture: Callable[[Mapping[str, Any]], keras.Model]) -> None:
    """Load the donor's weights and optimizer state from `exploit.snapshot` into `model` (built and compiled
    from the new segment's hparams), then give its optimizer the segment's learning rate.

    The optimizer's step count is set to the epochs done times this member's steps per epoch (the donor's
    own count when their batch sizes agree), so a learning-rate schedule built from the segment's hparams
    goes on from where the member is, not from its start; a constant rate (or reduce_on_plateau's) becomes
    the segment's `learning_rate`, replacing the donor's. The donor's other optimizer state (moments,
    momentum) is kept.

    SnapshotError when the file is missing or does not fit the model; `architecture` builds a model for
    given hparams, uncompiled, to tell which changed hparam altered the weights' shapes.
    """
    segment = exploit.segment
    path, epoch = exploit.snapshot, segment.start_epoch - 1
    whose = f"member {segment.parent_number}'s" if segment.parent_number is not None else "the donor's"
    with _log_files.io_failures(f"read the PBT snapshot {path}"):
        present = _log_files.exists(path)
    if not present:
        raise SnapshotError(f"cannot exploit {whose} snapshot of epoch {epoch}: {path} does not exist (the donor "
                            f"never saved it, or it was deleted while a member could still copy it)")
    optimizer = model.optimizer
    if not optimizer.built:
        # Keras loads an optimizer's state only into an optimizer that has its variables.
        optimizer.build(model.trainable_variables)
    try:
        with warnings.catch_warnings():
            # Otherwise a mismatch would leave the optimizer's fresh state in place without a word.
            warnings.filterwarnings("error", message=_OPTIMIZER_SKIPPED, category=UserWarning)
            model.load_weights(path)
    except Exception as error:
        if _log_files.is_io_error(error) and not _log_files.exists(path):
            raise InfrastructureError(f"cannot read the PBT snapshot {path}: it vanished while being loaded") \
                from error
        cause = _hparam_cause(path, segment.hparams, architecture)
        # Keras's message can hold whole weight arrays: its first line says enough.
        detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise SnapshotError(f"cannot exploit {whose} snapshot of epoch {epoch} ({path}): it does not fit the model "
                            f"and optimizer of the new segment's hparams{cause} ({type(error).__name__}: {detail})") \
            from error
    optimizer.iterations.assign(segment.start_epoch * steps_per_epoch)
    rate = build_learning_rate(segment.hparams, epochs, steps_per_epoch)
    if not isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        optimizer.learning_rate = rate


def _hparam_cause(path: str, hparams: Mapping[str, Any], architecture: Callable[[Mapping[str, Any]], keras.Model]
                  ) -> str:
    """Which of the new segment's hparams differ from the donor's in a way that changes the model's weights
    or the optimizer's variables, as a clause for the error; "" when the snapshot does not say."""
    donor = snapshot_hparams(path)
    if donor is None:
        return ""
    changed = [name for name in sorted(set(donor) | set(hparams)) if donor.get(name) != hparams.get(name)]
    if not changed:
        return ""
    causes = [name for name in changed if name in _OPTIMIZER_HPARAMS]
    try:
        shapes = _weight_shapes(architecture(donor))
        causes += [name for name in changed if name not in _OPTIMIZER_HPARAMS and name in hparams
                   and _weight_shapes(architecture({**donor, name: hparams[name]})) != shapes]
    except Exception as error:  # a plugin's builder may refuse a mix; then the changes are all that is known
        logger.debug("cannot build the donor's model to compare: %s", error)
    named = causes or changed
    changes = ", ".join(f"{name} {donor.get(name)!r} -> {hparams.get(name)!r}" for name in named)
    if causes:
        return (f": the mutable hparam(s) {changes} change the model's weight shapes or the optimizer's variables, "
                f"so a member cannot copy weights across them (make only hparams that keep the model's "
                f"variables mutable)")
    return f": the segment's hparams differ from the donor's in {changes}"


def _weight_shapes(model: keras.Model) -> list[tuple[Any, ...]]:
    return [tuple(variable.shape) for variable in model.weights]


# -- TensorBoard ---------------------------------------------------------------------------------------

class MemberSessions:
    """A PBT member's HParams sessions, one per segment, used where a trial has its one `TrialSession`.

    `hand_over` ends the current segment's session (SUCCESS, with the objective and num_params at its last
    epoch) and starts the next one's; the last is ended on exit like a trial's session: with `status`, or
    FAILURE when an exception ends the member, or not at all when `status` is None (handed back).
    """

    def __init__(self, assignment: Assignment, segment: PbtSegment, resumed: bool):
        self._trial_dir = assignment.logdir
        self._run = log_location.name(assignment.logdir)
        self._member = assignment.number
        self._log_scaled = assignment.log_scaled
        self.segment = segment
        self._session = self._session_of(segment, resumed)
        self.status: SessionStatus | None = SessionStatus.success

    def _session_of(self, segment: PbtSegment, resumed: bool) -> TrialSession:
        folder = segment_dir(self._trial_dir, segment.segment)
        hparams = {**segment.hparams, PBT_MEMBER: self._member, PBT_PARENT: segment.parent_number or 0}
        # Named after its run, as a trial's session is: `trial-0007/segment-02`.
        return TrialSession(folder, f"{self._run}/{log_location.name(folder)}", hparams, self._log_scaled,
                            resumed=resumed)

    def __enter__(self) -> MemberSessions:
        self._session.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._session.status = self.status
        self._session.__exit__(exc_type, exc, traceback)

    def hand_over(self, segment: PbtSegment, history: list[dict[str, float]], objective_metric: str) -> None:
        """End the current segment after its last epoch (the last in `history`), then start `segment`'s session."""
        self.write_final(objective_metric, history, pruned=False)
        self._session.end(SessionStatus.success)
        self.segment = segment
        self._session = self._session_of(segment, resumed=False)
        self._session.__enter__()

    def write_final(self, objective_metric: str, history: list[dict[str, float]], pruned: bool) -> None:
        """The current segment's columns: the objective, num_params, losses, accuracies and learning rate at
        its last epoch (the last in `history`), and for a pruned member `pruned_at_epoch`. Nothing when the
        segment has no epoch yet."""
        last = len(history) - 1
        if last < self.segment.start_epoch:
            return
        metrics = history[last]
        self._session.write_scalars({objective_metric: metrics[objective_metric], NUM_PARAMS: metrics[NUM_PARAMS],
                                     **segment_end_columns(metrics, objective_metric)}, step=last)
        if pruned:
            self._session.write_scalars({PRUNED_AT_EPOCH: len(history)}, step=last)

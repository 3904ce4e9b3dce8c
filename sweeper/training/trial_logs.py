"""Preparing a trial's TensorBoard folder for an attempt: start over, or rewind to the checkpoint's epoch.

A retried trial writes into the same folder as its earlier attempts. Left there, their events would
mix with the new ones: TensorBoard takes a metric's value at the highest step whichever attempt wrote
it, keeps the first session end it reads, and shows an epoch written twice as two points. So an
attempt that starts over removes every earlier event file, and one that resumes after `epoch` finished
epochs keeps exactly what those epochs wrote (their train/ and validation/ scalars, and the session
start) and drops the rest: scalars of the epochs it trains again, the trial's final scalars (the
objective, num_params, pruned_at_epoch: the attempt writes its own as it ends) and any session end.
Event files are rewritten whole under a temporary name and renamed into place. The trial's folder may
be a local one or an object-store URL (`sweeper.log_location`): files are listed, read and written
through `sweeper._log_files`, and read with TensorBoard's loader, which reads both.

A Population Based Training member has a session per segment, each in a folder of its own
(`segment-01`, ...): `rewind_segment_logs` keeps the ended segments before the one an attempt resumes
in, that one's session start only, and nothing of the segments after it, which the attempt writes again.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from sweeper import _log_files
from sweeper.hparams_log import SEGMENT_FOLDER_PREFIX, event_records, segment_dir
from sweeper.log_location import join

__all__ = ["rewind_segment_logs", "rewind_trial_logs", "wait_to_write_after_earlier_files"]

logger = logging.getLogger(__name__)

# The sub-folders Keras's TensorBoard callback writes per-epoch scalars into.
_EPOCH_FOLDERS = ("train", "validation")
_CREATED_SECOND = re.compile(r"tfevents\.(\d+)\.")
"""An event file's name: `events.out.tfevents.<second created>.<host>.<pid>.<count>.v2`."""


def rewind_trial_logs(trial_dir: str | Path, epoch: int) -> bool:
    """Keep the events of the `epoch` epochs a resumed attempt will not train again; True when a
    session start was kept (the attempt must not write another). With `epoch` 0, remove them all.

    Only event files are touched: nothing else in the folder is ours.
    """
    if epoch < 0:
        raise ValueError(f"`epoch >= 0` must hold, but got {epoch=}")
    if epoch == 0:
        for folder in (trial_dir, *(join(trial_dir, name) for name in _EPOCH_FOLDERS)):
            for path in _event_files(folder):
                _log_files.remove(path)
        return False
    for name in _EPOCH_FOLDERS:
        _rewind_epoch_folder(join(trial_dir, name), epoch)
    return _keep_first_session_start(trial_dir)


def rewind_segment_logs(trial_dir: str | Path, segment: int) -> bool:
    """Prepare a PBT member's segment folders for an attempt that resumes in segment `segment`; True when
    that segment's session start was kept (the attempt must not write another).

    Earlier segments ended before the checkpoint the attempt resumes from was saved: they stay whole.
    The resumed segment keeps its first session start and loses its final scalars and any end (the attempt
    writes them when the segment ends). Later segments' events are removed: an earlier attempt began them
    after an exploit answer that the checkpoint does not hold yet, and the server answers it again.
    """
    for name in _log_files.listdir(trial_dir):
        number = name.removeprefix(SEGMENT_FOLDER_PREFIX)
        if not (name.startswith(SEGMENT_FOLDER_PREFIX) and number.isdigit()) or int(number) <= segment:
            continue
        for path in _event_files(join(trial_dir, name)):
            _log_files.remove(path)
    return _keep_first_session_start(segment_dir(trial_dir, segment))


def wait_to_write_after_earlier_files(trial_dir: str | Path, *, limit: float = 5.0,
                                      clock: Callable[[], float] = time.time,
                                      sleep: Callable[[float], None] = time.sleep) -> float:
    """Wait until event files created from now on in the trial's train/ and validation/ folders sort after
    those there; the seconds waited.

    TensorBoard reads a folder's event files in name order, and a name holds its creation second, then
    the host, the process id and a count of the process's writers, compared as text. Two files created in
    the same second can sort either way: a PBT member handed over to another worker within the second
    (pid 18200 sorts before 18556), or a process's tenth writer ("10" before "9"). The member's curve then
    reads out of order. Waiting for the next second settles it; on one host that is under a second, and
    only when the newest file is that young. A clock more than `limit` seconds behind the host that wrote
    the newest file is not waited for, and logged.
    """
    seconds = [int(found.group(1)) for name in _EPOCH_FOLDERS for path in _event_files(join(trial_dir, name))
               if (found := _CREATED_SECOND.search(path.rsplit("/", 1)[-1]))]
    if not seconds:
        return 0.0
    wait = max(seconds) + 1 - clock()
    if wait <= 0:
        return 0.0
    if wait > limit:
        logger.warning("an event file in %s was created %.0f s in this host's future: this clock is behind that "
                       "host's, and TensorBoard may read the trial's epochs out of order", trial_dir, wait - 1)
        return 0.0
    sleep(wait)
    return wait


def _rewind_epoch_folder(folder: str, epoch: int) -> None:
    """Keep what Keras wrote during the epochs before `epoch`, in train/ or validation/.

    Its `epoch_<metric>` scalars have the epoch as their step, but the `evaluation_<metric>_vs_iterations`
    scalars it writes after each validation pass count optimizer steps instead. Both are written in
    training order, each epoch's `epoch_*` scalars last, so the events to keep are exactly those up to
    the last `epoch_*` scalar of an epoch before `epoch`: what follows belongs to epochs trained again.
    """
    files = [(path, _read(path)) for path in _event_files(folder)]
    cut: tuple[int, int] = (-1, -1)
    for n, (_, events) in enumerate(files):
        for k, (_, event) in enumerate(events):
            if _is_epoch_scalar(event) and event.step < epoch:
                cut = (n, k)
    for n, (path, events) in enumerate(files):
        _write(path, [record for k, (record, event) in enumerate(events)
                      if not event.HasField("summary")
                      or ((n, k) <= cut and not (_is_epoch_scalar(event) and event.step >= epoch))])


def _keep_first_session_start(trial_dir: str | Path) -> bool:
    """Keep only the trial folder's first session start: drop its final scalars (objective, num_params,
    pruned_at_epoch) and any session end."""
    kept = False
    for path in _event_files(trial_dir):
        records = []
        for record, event in _read(path):
            if not event.HasField("summary"):
                records.append(record)  # the file's header
            elif not kept and all(value.tag == hparams_metadata.SESSION_START_INFO_TAG
                                  for value in event.summary.value):
                records.append(record)
                kept = True
        _write(path, records)
    return kept


def _is_epoch_scalar(event: event_pb2.Event) -> bool:
    values = event.summary.value if event.HasField("summary") else ()
    return bool(values) and all(value.tag.startswith("epoch_") for value in values)


def _event_files(folder: str | Path) -> list[str]:
    # In name order, which is TensorBoard's reading order (the names start with the creation time).
    return _log_files.glob(join(folder, "*tfevents*"))


def _read(path: str) -> list[tuple[bytes, event_pb2.Event]]:
    # A record cut short by a killed writer ends the file: the loader stops there.
    return [(record, event_pb2.Event.FromString(record)) for record in RawEventFileLoader(path).Load()]


def _write(path: str, records: list[bytes]) -> None:
    """Replace an event file's events with `records`; remove it when nothing but its header is left."""
    if all(not event_pb2.Event.FromString(record).HasField("summary") for record in records):
        _log_files.remove(path)
        return
    # Written under a name without "tfevents" (TensorBoard ignores it), then renamed over the original,
    # so a TensorBoard reading the folder meanwhile never sees a half-written file.
    _log_files.write_atomically(path, event_records(records))

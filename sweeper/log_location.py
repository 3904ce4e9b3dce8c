"""Where a sweep's and a trial's logs live: under the server's logdir, a local folder or an object-store URL.

The server, the workers and the CLI all name folders through this module, so that a trial's folder in
an assignment, the folder the server writes the sweep's config to, and the one TensorBoard reads are
the same place whatever the logdir is. Layout: `<logdir>/<sweep_id>/<run name>/`, with the trial's
checkpoint in `<trial folder>/checkpoint/`. A trial's run name is its number within the sweep, zero-padded
(`trial-0007`), so that folders, TensorBoard's runs and its HParams sessions sort in number order; the
server decides it (sweeps created before numbered folders keep theirs named by trial id).

A logdir with a scheme (`gs://bucket/prefix`, `s3://...`, `file:///...`, any that TensorFlow's gfile
handles) is a URL: kept as written and joined with `/`. Anything else is a local folder, made absolute
once by the server, since workers run in other working folders.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["CHECKPOINT_FOLDER", "MIN_RUN_DIGITS", "SNAPSHOT_FOLDER", "checkpoint_dir", "is_url", "join", "name",
           "parent", "reader_flags", "resolve_logdir", "run_digits", "run_name", "snapshot_dir", "snapshots_dir",
           "sweep_dir", "trial_dir"]

CHECKPOINT_FOLDER = "checkpoint"
"""A trial's checkpoint folder, beside its logs: a retry on any worker that reaches the logdir resumes from it."""

MIN_RUN_DIGITS = 4
"""Run names pad numbers to at least this many digits, so a sweep keeps number order when extended, up to
9,999 trials; one created larger pads to its own size (`run_digits`)."""

# RFC 3986's scheme, then "://". Two letters at least, so a Windows drive ("C:/runs") is not a scheme.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether `location` is a URL (`gs://...`), read and written through gfile, rather than a local path."""
    return bool(_SCHEME.match(os.fspath(location)))


def resolve_logdir(logdir: str | os.PathLike[str]) -> str:
    """The server's logdir as workers receive it: a URL as written (less a trailing `/`), a local folder
    made absolute (`~` expanded), so trial folders do not move if the server's working folder changes."""
    text = os.fspath(logdir)
    if is_url(text):
        return _without_trailing_slash(text)
    return str(Path(text).expanduser().resolve())


def join(location: str | os.PathLike[str], *parts: str | int) -> str:
    """`location` with `parts` below it: with `/` for a URL, as the local file system joins for a path."""
    text = os.fspath(location)
    names = [str(part) for part in parts]
    if is_url(text):
        return "/".join([_without_trailing_slash(text), *names])
    return os.path.join(text, *names)


def parent(location: str | os.PathLike[str]) -> str:
    """The folder that holds `location`."""
    text = os.fspath(location)
    if is_url(text):
        return _without_trailing_slash(text).rsplit("/", 1)[0]
    return os.path.dirname(text)


def sweep_dir(logdir: str | os.PathLike[str], sweep_id: int) -> str:
    """A sweep's folder: its one hparams config, and its trials' folders."""
    return join(logdir, sweep_id)


def trial_dir(logdir: str | os.PathLike[str], sweep_id: int, run: str | int) -> str:
    """A trial's folder, named `run` (see `run_name`): its HParams session, and its train/ and validation/ scalars."""
    return join(logdir, sweep_id, run)


def run_digits(total_trials: int) -> int:
    """How many digits a sweep of `total_trials` pads its run names to: enough for its last trial's number."""
    return max(MIN_RUN_DIGITS, len(str(total_trials)))


def run_name(number: int, digits: int) -> str:
    """A trial's folder and TensorBoard run name: `trial-0007` for trial 7 of a sweep padded to 4 digits.

    Zero-padded because TensorBoard lists runs and HParams sessions in text order, where "10" comes before
    "2". A number wider than `digits` (a sweep extended past what it was created for) is written whole.
    """
    return f"trial-{number:0{digits}d}"


def name(location: str | os.PathLike[str]) -> str:
    """The last part of `location`: a trial folder's run name."""
    text = os.fspath(location)
    if is_url(text):
        return _without_trailing_slash(text).rsplit("/", 1)[-1]
    return os.path.basename(os.path.normpath(text))


def checkpoint_dir(trial_folder: str | os.PathLike[str]) -> str:
    """The checkpoint folder of the trial whose folder is `trial_folder`."""
    return join(trial_folder, CHECKPOINT_FOLDER)


SNAPSHOT_FOLDER = "pbt-snapshots"
"""A Population Based Training sweep's member snapshots, under its sweep's folder: outside each member's own
folder and checkpoint, which its worker deletes when it finishes while other members may still copy them."""


def snapshots_dir(logdir: str | os.PathLike[str], sweep_id: int) -> str:
    """Every snapshot of a PBT sweep's members: `<logdir>/<sweep_id>/pbt-snapshots`."""
    return join(logdir, sweep_id, SNAPSHOT_FOLDER)


def snapshot_dir(logdir: str | os.PathLike[str], sweep_id: int, run: str | int) -> str:
    """A PBT member's snapshots, named by its run name: `<logdir>/<sweep_id>/pbt-snapshots/trial-0007`."""
    return join(snapshots_dir(logdir, sweep_id), run)


def reader_flags(location: str | os.PathLike[str]) -> list[str]:
    """TensorBoard's flags for reading `location`: for a URL, its Python reader.

    TensorBoard's fast reader (its Rust data server) reads gs:// with a GCS client of its own, with its
    own credentials and certificate store; the Python reader goes through tf.io.gfile: the file systems,
    credentials and endpoints that the workers wrote the logs with. One sweep's folder is small enough
    that the slower reader costs little.
    """
    return ["--load_fast=false"] if is_url(location) else []


def _without_trailing_slash(url: str) -> str:
    # "gs://bucket/" names the bucket's root; "gs://" alone is no location, so it is left for gfile to refuse.
    stripped = url.rstrip("/")
    return stripped if not stripped.endswith(":") else url

"""Reading and writing files under a logdir, local or in an object store.

A local path goes through the standard library, so the API server and the worker supervisor write
a sweep's config and delete a checkpoint without loading TensorFlow. A URL (`gs://`, `s3://`,
`file://`, ...; see `sweeper.log_location`) goes through gfile: TensorFlow's `tf.io.gfile` where
TensorFlow is installed (the file systems, credentials and endpoints that TensorFlow's summary
writers and Keras use for the same URLs), TensorBoard's stub of it otherwise. It is loaded on the
first URL, never at import.

Errors are the standard library's whichever way: FileNotFoundError for a missing file, OSError for
any other failure, so callers handle one family. `io_failures` turns them (and the TensorFlow errors of
summary writers and Keras's saving, which write the same files) into `InfrastructureError`: a failed
write of a trial's logs or checkpoint is the storage's fault, never the trial's.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from typing import IO, Any

from sweeper._errors import InfrastructureError
from sweeper.log_location import is_url, join, parent

__all__ = ["exists", "glob", "io_failures", "is_io_error", "isdir", "listdir", "makedirs", "open_file", "read_bytes",
           "remove", "rename_new", "replace", "require_file_system", "rmtree", "write_atomically"]

Location = str | os.PathLike[str]


def exists(path: Location) -> bool:
    if is_url(path):
        with _gfile_errors(path):
            return bool(_gfile().exists(os.fspath(path)))
    return os.path.exists(path)


def isdir(path: Location) -> bool:
    """Whether `path` is a folder; in an object store, whether any object lies under it."""
    if is_url(path):
        with _gfile_errors(path):
            return bool(_gfile().isdir(os.fspath(path)))
    return os.path.isdir(path)


def makedirs(path: Location) -> None:
    """Create the folder and its parents; nothing to do when it exists."""
    if is_url(path):
        with _gfile_errors(path):
            _gfile().makedirs(os.fspath(path))
        return
    os.makedirs(path, exist_ok=True)


def glob(pattern: Location) -> list[str]:
    """The files matching `pattern` (wildcards in its last part), sorted by name."""
    if is_url(pattern):
        with _gfile_errors(pattern):
            return sorted(str(path) for path in _gfile().glob(os.fspath(pattern)))
    return sorted(path for path in _glob.glob(os.fspath(pattern)) if os.path.isfile(path))


def listdir(path: Location) -> list[str]:
    """The names of the files and folders in the folder `path`, sorted; none when it is missing."""
    if is_url(path):
        with contextlib.suppress(FileNotFoundError), _gfile_errors(path):
            # An object store's "folders" may come back with a trailing slash.
            return sorted(name.rstrip("/") for name in _gfile().listdir(os.fspath(path)))
        return []
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def read_bytes(path: Location) -> bytes:
    with open_file(path, "rb") as file:
        data: bytes = file.read()
        return data


@contextlib.contextmanager
def open_file(path: Location, mode: str) -> Iterator[IO[Any]]:
    """The file opened in `mode` ("rb", "wb"); a file written in an object store appears when it is closed."""
    if not is_url(path):
        with open(path, mode) as file:
            yield file
        return
    with _gfile_errors(path):
        if "r" in mode and not _gfile().exists(os.fspath(path)):
            raise FileNotFoundError(f"no such file: {os.fspath(path)}")
        with _gfile().GFile(os.fspath(path), mode) as file:
            yield file


def write_atomically(path: Location, data: bytes) -> None:
    """Write `data` to `path` so that no reader ever sees part of it.

    Written under a temporary name in the same folder, then renamed over `path`. The temporary name has
    no "tfevents" in it, so TensorBoard ignores it until the rename; in an object store the rename is a
    copy, and the copy appears whole.
    """
    partial = join(parent(path), f".partial.{uuid.uuid4().hex}.tmp")
    try:
        with open_file(partial, "wb") as file:
            file.write(data)
            if not is_url(partial):
                file.flush()
                os.fsync(file.fileno())
        replace(partial, path)
    except BaseException:
        remove(partial)  # only when it was not renamed: in an object store each call is a request
        raise


def replace(source: Location, target: Location) -> None:
    """Rename `source` to `target`, replacing it: atomic on a local disk, a copy then a delete in an object store."""
    if is_url(source) or is_url(target):
        with _gfile_errors(target):
            _gfile().rename(os.fspath(source), os.fspath(target), overwrite=True)
        return
    os.replace(source, target)


def rename_new(source: Location, target: Location) -> bool:
    """Rename `source` to `target` unless `target` exists; False (and `source` removed) when it does.

    For files written once and never again: on a local disk the file is linked under its new name, which
    fails rather than replaces when the name is taken, so of two racing writers exactly one wins. An
    object store has no such call: gfile's copy refuses an existing target, but two writers racing within
    the same instant may both succeed, the later one's copy winning.
    """
    if is_url(source) or is_url(target):
        with _gfile_errors(target):
            try:
                _gfile().rename(os.fspath(source), os.fspath(target), overwrite=False)
            except Exception as error:
                if not isinstance(error, _tf().errors.AlreadyExistsError):
                    raise
                remove(source)
                return False
        return True
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    finally:
        os.unlink(source)
    return True


def remove(path: Location) -> None:
    """Delete the file; nothing to do when it is missing."""
    if not is_url(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    with contextlib.suppress(FileNotFoundError), _gfile_errors(path):
        _gfile().remove(os.fspath(path))


def rmtree(path: Location) -> None:
    """Delete the folder and everything in it, as far as possible; nothing to do when it is missing."""
    if not is_url(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(OSError), _gfile_errors(path):
        if _gfile().exists(os.fspath(path)):
            _gfile().rmtree(os.fspath(path))


def require_file_system(location: Location) -> None:
    """Raise ValueError, naming the schemes there are, when `location` is a URL that gfile has no file
    system for. Checked when the server starts: a sweep's config and every trial would fail on it."""
    if not is_url(location):
        return
    scheme = os.fspath(location).split("://", 1)[0]
    registered = getattr(_gfile(), "get_registered_schemes", None)
    if registered is None:
        return  # TensorBoard's stub: it looks the scheme up in fsspec on first use
    schemes = sorted(name for name in registered() if name)
    if scheme not in schemes:
        hint = _S3_HINT if scheme in ("s3", "s3a") else ""
        raise ValueError(f"logdir {os.fspath(location)}: TensorFlow has no file system for {scheme}:// here (it has "
                         f"{', '.join(name + '://' for name in schemes)}); another scheme needs a file-system plugin "
                         f"built for this TensorFlow version, on the server and on every worker{hint}")


def is_io_error(error: BaseException) -> bool:
    """Whether `error` is a failure to read or write a file: an OSError, or one of TensorFlow's errors
    (its summary writers, gfile and Keras's saving to a URL raise those), when TensorFlow is loaded."""
    if isinstance(error, OSError):
        return True
    # Only a loaded TensorFlow can have raised its errors: never imported for this check.
    tf = sys.modules.get("tensorflow")
    op_error = getattr(getattr(tf, "errors", None), "OpError", None)
    return isinstance(op_error, type) and isinstance(error, op_error)


@contextlib.contextmanager
def io_failures(action: str) -> Iterator[None]:
    """Raise an I/O error from inside (see `is_io_error`) as `InfrastructureError("cannot <action>: ...")`,
    chained from it; any other error passes unchanged. `action` names what was done and where."""
    try:
        yield
    except Exception as error:
        if not is_io_error(error):
            raise
        raise InfrastructureError(f"cannot {action}: {type(error).__name__}: {_first_line(error)}") from error


_S3_HINT = ("; for S3, TensorFlow's plugin (tensorflow-io, 0.37.1 at the latest) does not load into TensorFlow 2.18 or "
            "later: mount the bucket at the same path on every host and give that folder as the logdir")


def _tf() -> Any:
    # TensorFlow itself when installed (as on every worker), else TensorBoard's stub: loaded on first use.
    from tensorboard.compat import tf

    return tf


def _gfile() -> Any:
    return _tf().io.gfile


@contextlib.contextmanager
def _gfile_errors(path: Location) -> Iterator[None]:
    """gfile's errors (TensorFlow's OpError family) as the standard library's."""
    try:
        yield
    except OSError:
        raise
    except Exception as error:
        errors = _tf().errors
        if isinstance(error, errors.NotFoundError):
            raise FileNotFoundError(f"no such file or folder: {os.fspath(path)}: {_first_line(error)}") from error
        if isinstance(error, errors.OpError):
            raise OSError(f"cannot access {os.fspath(path)}: {_first_line(error)}") from error
        raise


def _first_line(error: BaseException) -> str:
    lines = str(getattr(error, "message", None) or error).strip().splitlines()
    return lines[0] if lines else type(error).__name__

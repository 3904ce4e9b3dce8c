"""Worker ids that stay the same across restarts and are never used by two live processes on a host.

A worker's id is `<host>-gpu<index>` or `<host>-cpu<k>`, so a restarted worker claims again under
the same id and gets its own unfinished trial back. Two processes on one host must not both use an
id: each claim by one would take the other's trial away. So each id is reserved by an exclusive
`flock` on a file. Such a lock belongs to the open file, not to a process: the supervisor hands the
open file to each child it starts, and the id stays reserved until every process holding it has
exited, however it exits. A supervisor killed while its child still trains therefore leaves the id
taken, and the next supervisor uses `<id>-2`, `<id>-3`, ...; an agent started on its own reserves its
id itself and refuses to start when it is taken.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from sweeper import SweeperError

__all__ = ["ReservedId", "WorkerIdInUseError", "adopt", "default_lock_dir", "reserve", "reserve_exactly"]

LOCK_DIR_VARIABLE = "SWEEPER_LOCK_DIR"


class WorkerIdInUseError(SweeperError):
    """Another live process uses this worker id."""


def default_lock_dir() -> Path:
    """Where the reservations live: shared by every worker process of this host (SWEEPER_LOCK_DIR overrides)."""
    return Path(os.environ.get(LOCK_DIR_VARIABLE) or Path(tempfile.gettempdir()) / "sweeper-worker-ids")


class ReservedId:
    """An id held by this process (and any it hands `fileno()` to) until `release()` or their end."""

    def __init__(self, worker_id: str, path: Path, fd: int):
        self.worker_id = worker_id
        self.path = path
        self._fd: int | None = fd

    def fileno(self) -> int:
        """The open lock file, for `subprocess.Popen(pass_fds=...)`: the child then holds the id too."""
        if self._fd is None:
            raise ValueError(f"the reservation of {self.worker_id} was released")
        return self._fd

    def release(self) -> None:
        """Close this process's hold; the id is free once no other process holds the file either."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def reserve(base: str, lock_dir: Path | None = None, attempts: int = 1000) -> ReservedId:
    """Reserve `base`, or the first of `base-2`, `base-3`, ... that no other process holds."""
    folder = _folder(lock_dir)
    for n in range(1, attempts + 1):
        reserved = _try_lock(base if n == 1 else f"{base}-{n}", folder)
        if reserved is not None:
            return reserved
    raise WorkerIdInUseError(f"no free worker id among {base} .. {base}-{attempts} in {folder}")


def reserve_exactly(worker_id: str, lock_dir: Path | None = None) -> ReservedId:
    """Reserve `worker_id` itself; WorkerIdInUseError, naming its lock file, when another process holds it."""
    folder = _folder(lock_dir)
    reserved = _try_lock(worker_id, folder)
    if reserved is None:
        path = _lock_file(worker_id, folder)
        raise WorkerIdInUseError(f"worker id {worker_id!r} is in use: another process on this host holds its lock "
                                 f"file {path} (`fuser {path}` names it); give this worker another --worker-id, or "
                                 f"stop that process first")
    return reserved


def adopt(worker_id: str, fd: int, lock_dir: Path | None = None) -> ReservedId:
    """Take over the reservation a supervisor handed down as the open file `fd`.

    ValueError unless `fd` is `worker_id`'s lock file; WorkerIdInUseError when the lock on it belongs to
    another open file: a child must never run under an id that it does not hold.
    """
    path = _lock_file(worker_id, _folder(lock_dir))
    try:
        same_file = os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError as error:
        raise ValueError(f"file descriptor {fd} is not the lock file {path} of worker id {worker_id!r}: "
                         f"{error}") from error
    if not same_file:
        raise ValueError(f"file descriptor {fd} is not the lock file {path} of worker id {worker_id!r}")
    try:
        # Locking again through the open file that holds the lock succeeds at once; through another, not.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise WorkerIdInUseError(f"worker id {worker_id!r} is in use: file descriptor {fd} is its lock file {path}, "
                                 f"but another process holds the lock") from None
    # Not passed on to programs this process starts: only worker processes hold the id.
    os.set_inheritable(fd, False)
    return ReservedId(worker_id, path, fd)


def _folder(lock_dir: Path | None) -> Path:
    folder = lock_dir or default_lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _lock_file(worker_id: str, folder: Path) -> Path:
    return folder / f"{worker_id}.lock"


def _try_lock(worker_id: str, folder: Path) -> ReservedId | None:
    path = _lock_file(worker_id, folder)
    # Opened without truncating: when another process holds the lock, what it wrote there stays.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    # For a human who finds the file: the process that reserved the id.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return ReservedId(worker_id, path, fd)

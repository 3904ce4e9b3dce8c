"""Worker ids that stay the same across restarts and are never shared by two processes on a host.

A worker's id is `<host>-gpu<index>` or `<host>-cpu<k>`, so a restarted worker claims again under
the same id and gets its own unfinished trial back. Two supervisors on one host must not both use an
id, or the server would hand both the same trial: each id is reserved by an exclusive lock on a file,
which the operating system releases when the supervisor exits, however it exits. A taken id makes
the next supervisor use `<id>-2`, `<id>-3`, ...
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO


def default_lock_dir() -> Path:
    """Where the reservations live: shared by every supervisor of this host (SWEEPER_LOCK_DIR overrides)."""
    return Path(os.environ.get("SWEEPER_LOCK_DIR") or Path(tempfile.gettempdir()) / "sweeper-worker-ids")


class ReservedId:
    """An id held for this process until `release()` (or the process's end)."""

    def __init__(self, worker_id: str, handle: IO[str]):
        self.worker_id = worker_id
        self._handle = handle

    def release(self) -> None:
        self._handle.close()


def reserve(base: str, lock_dir: Path | None = None, attempts: int = 1000) -> ReservedId:
    """Reserve `base`, or the first of `base-2`, `base-3`, ... that no other process holds."""
    folder = lock_dir or default_lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, attempts + 1):
        worker_id = base if n == 1 else f"{base}-{n}"
        handle = open(folder / f"{worker_id}.lock", "w")  # noqa: SIM115 - held open as the reservation
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return ReservedId(worker_id, handle)
    raise RuntimeError(f"no free worker id among {base} .. {base}-{attempts} in {folder}")

"""Noticing that the supervisor which started a worker process has died.

A worker runs in its own process group, so a signal meant for its supervisor's group (a `kill -9 --
-<pgid>`) passes it by. Left running, it would keep training a trial that a restarted supervisor's
worker may claim again, so a worker whose supervisor is gone stops its trial, hands it back and exits.
Two ways to notice, either enough: the parent-death signal that Linux sends at once (`prctl`), and
comparing the parent's pid on every heartbeat and idle poll, which works everywhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

__all__ = ["SupervisorWatch"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class SupervisorWatch:
    """Whether the supervisor (pid `supervisor_pid`, this process's parent at its start) still lives.

    With `supervisor_pid` None the process is not supervised, and its supervisor is never gone.
    """

    def __init__(self, supervisor_pid: int | None):
        self.supervisor_pid = supervisor_pid
        self._gone = threading.Event()

    def gone(self) -> bool:
        """Checked now; once gone, always gone (a process never gets its parent back)."""
        if self._gone.is_set():
            return True
        # An orphan is adopted by init or a subreaper, so its parent's pid changes for good.
        if self.supervisor_pid is not None and os.getppid() != self.supervisor_pid:
            logger.warning("the supervisor (pid %d) is gone", self.supervisor_pid)
            self._gone.set()
        return self._gone.is_set()

    def signal_on_death(self, on_death: Callable[[], None], signum: int = signal.SIGUSR1) -> bool:
        """On Linux, have the kernel send `signum` when the supervisor dies, and call `on_death` then.

        Main thread only (it installs a signal handler). False where there is no such signal; the pid
        check on each heartbeat still notices, within an interval.
        """
        if self.supervisor_pid is None or not sys.platform.startswith("linux"):
            return False
        libc_name = ctypes.util.find_library("c")
        if libc_name is None:
            return False
        signal.signal(signum, lambda _signum, _frame: on_death())
        libc = ctypes.CDLL(libc_name, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            logger.debug("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
            return False
        # The supervisor may have died before the request: then no signal ever comes.
        if self.gone():
            on_death()
        return True

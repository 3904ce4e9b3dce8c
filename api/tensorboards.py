"""TensorBoard on demand: one process per sweep folder, reached only through the server's proxy.

TensorBoard shows whatever experiment configs it finds under its logdir, so pointed at the whole logdir
several sweeps would mix their HParams columns; each sweep therefore gets its own process on its own
folder. A process is bound to 127.0.0.1 and serves under `/tensorboard/{sweep_id}` (its
`--path_prefix`), the same path the app proxies, so its pages and links work unchanged through the
proxy. It answers only requests that carry its own random secret (api.tensorboard_child), which the
proxy adds, so it is reachable only through the app (and its auth), not by another local user who
connects to its port; and it reads with TensorBoard's Python reader (`--load_fast=false`), so it
opens no data server of its own, whose port would answer anyone.

Every proxied request marks it in use; a background thread stops the ones idle longer than the idle
limit, and the next request starts it again. At most `max_running` run at once (each one imports
TensorFlow: a few hundred megabytes): starting another stops the least recently used one that is not
in use (no request under way, none for `in_use_seconds`), or is refused when all are in use. The app
stops them all when it shuts down.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from api.tensorboard_child import SECRET_ENV, SECRET_HEADER
from sweeper import SweeperError, log_files
from sweeper.log_location import reader_flags, sweep_dir

logger = logging.getLogger(__name__)

URL_PREFIX = "/tensorboard"
START_TIMEOUT_SECONDS = 90.0
"""TensorBoard imports TensorFlow when it is installed: several seconds on a busy machine."""
START_ATTEMPTS = 3
"""A free port can be taken by another program between choosing it and TensorBoard binding it; try again."""
STOP_TIMEOUT_SECONDS = 10.0
OUTPUT_LINES_KEPT = 40
THREAD_NAME = "sweeper-tensorboard-idle"
DEFAULT_MAX_RUNNING = 3
IN_USE_SECONDS = 60.0
"""A TensorBoard asked for anything this recently is in use, and never stopped to make room for another:
twice TensorBoard's default reload period, so a dashboard open in a browser (which asks every 30 s) counts."""
SECRET_BYTES = 32


class TensorBoardUnavailableError(SweeperError):
    """A sweep's TensorBoard could not be started (not installed, crashed, or too slow to answer)."""


class NoSweepLogsError(TensorBoardUnavailableError):
    """There is no folder to show: no such sweep (a sweep's folder is written when it is created)."""


class TensorBoardsBusyError(TensorBoardUnavailableError):
    """As many TensorBoards as allowed are running, and every one is in use: none may be stopped for another."""


@dataclass(frozen=True)
class Upstream:
    """Where the proxy reaches a running TensorBoard, and the header that lets it in."""

    port: int
    secret: str = field(repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        """Added to every request forwarded to it: without them the TensorBoard answers 403."""
        return {SECRET_HEADER: self.secret}


def path_prefix(sweep_id: int) -> str:
    """Where a sweep's TensorBoard is served, on its own port and through the app's proxy alike."""
    return f"{URL_PREFIX}/{sweep_id}"


def tensorboard_command(folder: str | Path, port: int, prefix: str) -> list[str]:
    """The command line of one sweep's TensorBoard (through api.tensorboard_child, which guards it and ends it
    with the server). It holds no secret: every local user can read a command line."""
    # The Python reader always: the fast one runs a data server on a localhost port of its own, which
    # would answer anyone without the secret. One sweep's folder is small enough for the slower reader.
    flags = [flag for flag in reader_flags(folder) if not flag.startswith("--load_fast")]
    return [sys.executable, "-m", "api.tensorboard_child", "--logdir", str(folder), "--host", "127.0.0.1",
            "--port", str(port), "--path_prefix", prefix, "--load_fast=false", *flags]


@dataclass
class _Board:
    """One sweep's TensorBoard: its process while it runs, and when it was last asked for anything."""

    sweep_id: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while starting or stopping, so two first requests start one process, not two."""
    process: subprocess.Popen[bytes] | None = None
    port: int | None = None
    secret: str | None = field(default=None, repr=False)
    """The process's own: the proxy sends it with every request, and the process refuses requests without it."""
    last_used: float = 0.0
    requests: int = 0
    """Proxied requests under way (their answers may still be streaming); changed under TensorBoards._lock."""
    starting: bool = False
    """Counted against the limit while its process starts; changed under TensorBoards._lock."""
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=OUTPUT_LINES_KEPT))

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class TensorBoards:
    """The app's TensorBoards, one per sweep, started on demand and stopped when idle.

    Thread-safe: `ensure` and `acquire` run in the server's worker threads (they block while a process
    starts), the idle check in its own thread.
    """

    def __init__(self, logdir: str | Path, *, idle_seconds: float, max_running: int = DEFAULT_MAX_RUNNING,
                 in_use_seconds: float = IN_USE_SECONDS, start_timeout: float = START_TIMEOUT_SECONDS):
        if idle_seconds <= 0:
            raise ValueError(f"tensorboard idle_seconds must be > 0, but got {idle_seconds}")
        if max_running < 1:
            raise ValueError(f"max_tensorboards must be >= 1, but got {max_running}")
        self.logdir = logdir
        self.idle_seconds = idle_seconds
        self.max_running = max_running
        self.in_use_seconds = in_use_seconds
        """How recently a TensorBoard must have been asked for something to be in use (see IN_USE_SECONDS)."""
        self._start_timeout = start_timeout
        self._boards: dict[int, _Board] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._http: httpx.AsyncClient | None = None

    # -- the processes ------------------------------------------------------------------------------

    def folder(self, sweep_id: int) -> str:
        return sweep_dir(self.logdir, sweep_id)

    def ensure(self, sweep_id: int) -> Upstream:
        """The sweep's running TensorBoard, started first if it is not running; marks it in use.

        Blocks while a process starts. When `max_running` already run, the least recently used one that is
        not in use is stopped first. Raises TensorBoardsBusyError when every one is in use, and
        TensorBoardUnavailableError when it cannot be started.
        """
        return self._ensure(sweep_id, hold=False)

    def acquire(self, sweep_id: int) -> Upstream:
        """`ensure`, and count a proxied request as under way until `release`: not stopped meanwhile."""
        return self._ensure(sweep_id, hold=True)

    def release(self, sweep_id: int) -> None:
        """End a request that `acquire` counted; it counts as use until now."""
        with self._lock:
            board = self._boards.get(sweep_id)
            if board is not None:
                board.requests = max(0, board.requests - 1)
                board.last_used = time.monotonic()

    def _ensure(self, sweep_id: int, *, hold: bool) -> Upstream:
        folder = self.folder(sweep_id)
        try:
            found = log_files.isdir(folder)
        except OSError as error:  # an object store that refuses the server's credentials, say
            raise TensorBoardUnavailableError(f"cannot read the logs of sweep {sweep_id} in {folder}: "
                                              f"{error}") from None
        if not found:
            raise NoSweepLogsError(f"no TensorBoard logs for sweep {sweep_id}: no sweep with this id, or its folder "
                                   f"is gone from the logdir")
        board = self._board(sweep_id)
        with board.lock:
            board.last_used = time.monotonic()
            if not board.alive:
                if board.process is not None:
                    logger.warning("TensorBoard for sweep %d had exited (code %s); starting it again",
                                   sweep_id, board.process.returncode)
                self._make_room(board)
                try:
                    self._start(board)
                finally:
                    with self._lock:
                        board.starting = False
            assert board.port is not None and board.secret is not None
            with self._lock:
                board.last_used = time.monotonic()
                if hold:
                    board.requests += 1
            return Upstream(board.port, board.secret)

    def touch(self, sweep_id: int) -> None:
        """Mark the sweep's TensorBoard as in use (a request through the proxy is under way or just ended)."""
        with self._lock:
            board = self._boards.get(sweep_id)
        if board is not None:
            board.last_used = time.monotonic()

    def pid(self, sweep_id: int) -> int | None:
        """The process id of the sweep's running TensorBoard; None when none runs."""
        with self._lock:
            board = self._boards.get(sweep_id)
        return board.process.pid if board is not None and board.alive and board.process is not None else None

    def running(self) -> list[int]:
        """The sweeps whose TensorBoard is running."""
        with self._lock:
            boards = list(self._boards.values())
        return sorted(board.sweep_id for board in boards if board.alive)

    def stop_idle(self) -> list[int]:
        """Stop every TensorBoard unused for longer than the idle limit; the sweeps whose one was stopped."""
        now = time.monotonic()
        with self._lock:
            boards = list(self._boards.values())
        stopped = []
        for board in boards:
            if not board.alive or board.requests or now - board.last_used <= self.idle_seconds:
                continue
            # Not while it starts or serves a first request; checked again below, once the lock is ours.
            if not board.lock.acquire(blocking=False):
                continue
            try:
                if board.alive and not board.requests and time.monotonic() - board.last_used > self.idle_seconds:
                    logger.info("stopping TensorBoard for sweep %d: idle for more than %.0f s",
                                board.sweep_id, self.idle_seconds)
                    _stop(board)
                    stopped.append(board.sweep_id)
            finally:
                board.lock.release()
        return stopped

    def stop_all(self) -> None:
        with self._lock:
            boards = list(self._boards.values())
        for board in boards:
            with board.lock:
                _stop(board)

    # -- the idle check and the proxy's connections -------------------------------------------------

    def start(self) -> None:
        """Start the background idle check."""
        if self._thread is not None:
            raise RuntimeError("the TensorBoard idle check was already started")
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def http(self) -> httpx.AsyncClient:
        """The pooled client the proxy reaches TensorBoards with (made on first use, in the app's event loop)."""
        if self._http is None:
            # No timeout on reading: TensorBoard may take a while on a large logdir, and the browser
            # decides how long to wait.
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), follow_redirects=False,
                                           trust_env=False)
        return self._http

    async def aclose(self) -> None:
        """Stop the idle check and every TensorBoard, and close the proxy's connections (at app shutdown)."""
        self._stopping.set()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_SECONDS)
        self.stop_all()

    def _run(self) -> None:
        # Often enough that a board is stopped within about a quarter of the limit past it.
        interval = max(0.1, min(30.0, self.idle_seconds / 4))
        while not self._stopping.wait(interval):
            try:
                self.stop_idle()
            except Exception:
                logger.exception("stopping idle TensorBoards failed; trying again in %.1f s", interval)

    # -- starting -----------------------------------------------------------------------------------

    def _board(self, sweep_id: int) -> _Board:
        with self._lock:
            return self._boards.setdefault(sweep_id, _Board(sweep_id))

    def _in_use(self, board: _Board, now: float) -> bool:
        return board.starting or board.requests > 0 or now - board.last_used < self.in_use_seconds

    def _make_room(self, board: _Board) -> None:
        """Reserve a place for `board` among the running TensorBoards (the caller holds its lock, and starts it).

        While `max_running` others run or start, stop the least recently used one not in use; when all
        are in use, raise TensorBoardsBusyError.
        """
        deadline = time.monotonic() + self._start_timeout
        while True:
            with self._lock:
                now = time.monotonic()
                others = [other for other in self._boards.values()
                          if other is not board and (other.starting or other.alive)]
                if len(others) < self.max_running:
                    board.starting = True
                    return
                idle = sorted((other for other in others if not self._in_use(other, now)),
                              key=lambda other: other.last_used)
                if not idle or time.monotonic() > deadline:
                    raise TensorBoardsBusyError(self._busy_message(len(others)))
            victim = idle[0]
            # Its lock is held only briefly (a request marking it, or the idle check stopping it); never
            # by a thread that waits for this board's, which is starting (`_make_room` skips those).
            if not victim.lock.acquire(timeout=STOP_TIMEOUT_SECONDS):
                continue
            try:
                with self._lock:
                    still_idle = victim.alive and not self._in_use(victim, time.monotonic())
                if still_idle:
                    logger.info("stopping TensorBoard for sweep %d, the least recently used, to start sweep %d's "
                                "(max_tensorboards %d)", victim.sweep_id, board.sweep_id, self.max_running)
                    _stop(victim)
            finally:
                victim.lock.release()

    def _busy_message(self, running: int) -> str:
        boards = "1 TensorBoard is" if running == 1 else f"{running} TensorBoards are"
        return (f"{boards} running, the most this server allows, and all are in use (starting, or asked for "
                f"something in the last {self.in_use_seconds:.0f} s); try again once one is idle, or raise the "
                f"limit with `sweeper serve --max-tensorboards N` (or SWEEPER_MAX_TENSORBOARDS)")

    def _start(self, board: _Board) -> None:
        folder = self.folder(board.sweep_id)
        for attempt in range(1, START_ATTEMPTS + 1):
            board.port = _free_port()
            board.secret = secrets.token_urlsafe(SECRET_BYTES)
            board.output.clear()
            command = tensorboard_command(folder, board.port, path_prefix(board.sweep_id))
            logger.info("starting TensorBoard for sweep %d on 127.0.0.1:%d", board.sweep_id, board.port)
            try:
                # Its stdin is a pipe this process holds open and never writes: it closes when the
                # server ends, however it ends, and the child then stops (api.tensorboard_child).
                # The secret goes in its environment, which only this user can read, not on its command line.
                board.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                 stderr=subprocess.STDOUT, env=_environment(board.secret))
            except OSError as error:
                raise TensorBoardUnavailableError(f"cannot start TensorBoard for sweep {board.sweep_id}: "
                                                  f"{error}") from None
            _keep_output(board)
            if self._wait_until_serving(board):
                board.last_used = time.monotonic()
                return
            _stop(board)
            if attempt < START_ATTEMPTS and "could not bind" in "".join(board.output):
                continue
            break
        tail = "".join(board.output).strip()[-2000:] or "(no output)"
        raise TensorBoardUnavailableError(f"TensorBoard for sweep {board.sweep_id} did not start: {tail}")

    def _wait_until_serving(self, board: _Board) -> bool:
        url = f"http://127.0.0.1:{board.port}{path_prefix(board.sweep_id)}/data/environment"
        assert board.secret is not None
        headers = {SECRET_HEADER: board.secret}
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
            if not board.alive:
                return False
            try:
                if httpx.get(url, headers=headers, timeout=2.0, trust_env=False).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        board.output.append(f"\n(no answer within {self._start_timeout:.0f} s)")
        return False


def _environment(secret: str) -> dict[str, str]:
    # TensorBoard imports TensorFlow when it can: keep it quiet, and off the GPUs the workers train on
    # (importing TensorFlow initialises CUDA and would take GPU memory on a GPU box).
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1", SECRET_ENV: secret}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _keep_output(board: _Board) -> None:
    """Read the process's output in a thread, keeping its last lines (shown when it fails to start)."""
    process, output = board.process, board.output
    assert process is not None and process.stdout is not None
    stream = process.stdout

    def read() -> None:
        for line in stream:
            output.append(line.decode("utf-8", "replace"))
        stream.close()

    threading.Thread(target=read, name=f"tensorboard-{board.sweep_id}-output", daemon=True).start()


def _stop(board: _Board) -> None:
    process = board.process
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            logger.warning("TensorBoard for sweep %d did not stop within %.0f s; killing it",
                           board.sweep_id, STOP_TIMEOUT_SECONDS)
            process.kill()
            process.wait()
    if process.stdin is not None:
        process.stdin.close()
    board.process = None
    board.port = None
    board.secret = None

"""Running the app under uvicorn: in the foreground (`sweeper serve`) or in a background thread
(`sweeper run`, tests).
"""

from __future__ import annotations

import gc
import math
import sys
import threading
import time
from dataclasses import dataclass

import uvicorn

from api.app import create_app
from api.settings import Settings

STARTUP_TIMEOUT_SECONDS = 30.0
KEEP_ALIVE_MARGIN_SECONDS = 5
"""How much longer than a heartbeat an idle connection stays open (a late beat still finds it)."""
MAX_KEEP_ALIVE_SECONDS = 300
GIL_SWITCH_SECONDS = 0.001


def serve(settings: Settings, *, access_log: bool = False) -> None:
    """Serve until interrupted (Ctrl+C or SIGTERM); blocks. `access_log` logs a line per request.

    Off by default: with a fleet claiming and reporting, the access log is most of the log and a
    noticeable share of each request's CPU; warnings and errors are logged either way.
    """
    # Two threads share the interpreter under load: the event loop and the claim desk (api.claims.desk).
    # Python hands the GIL over every 5 ms by default, so each waits up to that long for the other at
    # every turn; 1 ms keeps claims moving through both without measurable overhead.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    config = _config(settings, embedded=False, access_log=access_log)
    _freeze_long_lived_objects()
    uvicorn.Server(config).run()


def _freeze_long_lived_objects() -> None:
    """Move what lives as long as the server (its modules, the app and its routes, the engine) out of the
    garbage collector's sight, once the app is built.

    Under a fleet's claims the server makes objects fast enough for a full collection every second or
    so, and each walked everything the process holds: 55 to 60 ms in which no request moved, the tail
    of the claim latency. Frozen, a full collection walks only what requests made since. The process
    keeps what is frozen until it exits, which is what it does anyway with its modules and its app.
    Only here, in the server's own process: a program that embeds the server (tests, `sweeper run`)
    keeps its own collector as it is.
    """
    gc.collect()
    gc.freeze()


@dataclass
class RunningServer:
    """A server in a daemon thread; `url` has the real port, also when it was started on port 0."""

    url: str
    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait for the thread to end (in-flight requests get `timeout` to finish)."""
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_in_thread(settings: Settings) -> RunningServer:
    """Start serving in a daemon thread and return once it accepts connections."""
    server = uvicorn.Server(_config(settings, embedded=True))
    thread = threading.Thread(target=_run, args=(server,), name="sweeper-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the sweeper server failed to start on {settings.host}:{settings.port} "
                               f"(see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the sweeper server did not start within {STARTUP_TIMEOUT_SECONDS:.0f} s")
        time.sleep(0.01)
    # With port 0 the OS chose the port: read it back from the listening socket.
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    # Bound to every interface: this machine reaches it on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    host = f"[{host}]" if ":" in host else host
    return RunningServer(url=f"http://{host}:{port}", _server=server, _thread=thread)


def _run(server: uvicorn.Server) -> None:
    try:
        server.run()
    except SystemExit:
        pass  # uvicorn exits when it cannot start (port taken); start_in_thread raises for it


def _config(settings: Settings, *, embedded: bool, access_log: bool = False) -> uvicorn.Config:
    # The app is built here, not at import, so each server gets the engine its settings name.
    # uvicorn's loop and HTTP parser are left on "auto": uvloop and httptools when they are installed
    # (each takes a good share off a request's CPU), asyncio and h11 otherwise.
    # A worker holding a trial calls at least once a heartbeat: a connection kept open longer than that
    # serves all its calls, where uvicorn's default (5 s) would make most of them open a new one.
    keep_alive = min(MAX_KEEP_ALIVE_SECONDS, math.ceil(settings.heartbeat_interval) + KEEP_ALIVE_MARGIN_SECONDS)
    if embedded:
        # Inside another program (`sweeper run` draws a progress bar): no access log, and leave the
        # host's logging configuration alone instead of replacing it with uvicorn's.
        return uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                              log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                              timeout_keep_alive=keep_alive)
    return uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                          access_log=access_log, timeout_graceful_shutdown=5, timeout_keep_alive=keep_alive)

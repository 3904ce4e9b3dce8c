"""A sweep's TensorBoard, run as the server's child process: TensorBoard itself, guarded, ended with the server.

Only the server's proxy may talk to it. The child listens on 127.0.0.1, where every local user can
connect, so the server gives it a random secret (in the environment variable SECRET_ENV, never on the
command line, which `ps` shows to every user) and adds it to every request it forwards as the header
SECRET_HEADER. TensorBoard's WSGI app is wrapped (through `program.TensorBoard`'s `server_class`) in
`require_secret`, which answers 403 to any request without it and hides it from TensorBoard. Its web
assets tick every varying hparam in the HParams dashboard (api.tensorboard_assets).

The server starts it with a pipe as its stdin, keeps the write end and never writes to it. However the
server ends, a SIGKILL or a crash included, the system closes that end; reading stdin then returns here
and the child stops TensorBoard, so no TensorBoard outlives the server that started it.

Run as `python -m api.tensorboard_child <TensorBoard's flags>`, with SECRET_ENV set; api.tensorboards does.
"""

from __future__ import annotations

import hmac
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

GRACE_SECONDS = 10.0
"""TensorBoard exits on SIGTERM after its exit handlers; past this it is ended outright."""
SECRET_ENV = "SWEEPER_TENSORBOARD_SECRET"
"""The environment variable the server passes the child's secret in (removed once read)."""
SECRET_HEADER = "X-Sweeper-TensorBoard-Secret"
"""The request header the proxy sends the child's secret in."""
_SECRET_KEY = "HTTP_" + SECRET_HEADER.upper().replace("-", "_")
"""SECRET_HEADER as a WSGI environ key."""
_REFUSED = b"this TensorBoard answers only the sweeper server's proxy: open it through the server\n"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def require_secret(app: WSGIApp, secret: str) -> WSGIApp:
    """`app`, answering 403 to any request whose SECRET_HEADER is not `secret`; `app` never sees the header."""
    if not secret:
        raise ValueError("the TensorBoard secret must not be empty")
    expected = secret.encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.pop(_SECRET_KEY, "")
        # WSGI gives header values as latin-1 str; compared in constant time.
        if not hmac.compare_digest(str(given).encode("latin-1", "replace"), expected):
            start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8"),
                                             ("Content-Length", str(len(_REFUSED)))])
            return [_REFUSED]
        return app(environ, start_response)

    return guarded


def end_with_parent() -> None:
    """Wait for the parent's end of stdin to close, then stop this process."""
    try:
        while sys.stdin.buffer.read(65536):
            pass  # the server never writes; anything that arrives is ignored
    except OSError:
        pass  # a broken stdin says the same as an end of file: the server is gone
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_SECONDS)
    os._exit(1)


def main() -> None:
    # Read, then dropped from the environment, so nothing TensorBoard starts inherits it.
    secret = os.environ.pop(SECRET_ENV, "")
    if not secret:
        sys.stderr.write(f"error: {SECRET_ENV} is not set; this TensorBoard is started by the sweeper server\n")
        sys.exit(2)
    threading.Thread(target=end_with_parent, name="end-with-server", daemon=True).start()

    # TensorBoard's own server, serving the WSGI app wrapped by require_secret.
    from tensorboard import program

    from api.tensorboard_assets import run_tensorboard

    def guarded_server(wsgi_app: WSGIApp, flags: Any) -> program.TensorBoardServer:
        return program.create_port_scanning_werkzeug_server(require_secret(wsgi_app, secret), flags)

    run_tensorboard(guarded_server)

if __name__ == "__main__":
    main()

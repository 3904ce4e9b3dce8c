"""A sweep's TensorBoard, run as the server's child process: TensorBoard's own main, ended with the server.

The server starts it with a pipe as its stdin, keeps the write end and never writes to it. However the
server ends, a SIGKILL or a crash included, the system closes that end; reading stdin then returns here
and the child stops TensorBoard, so no TensorBoard outlives the server that started it. (TensorBoard's
own data server, when it runs one, dies with TensorBoard the same way: `--die-after-stdin`.)

Run as `python -m api.tensorboard_child <TensorBoard's flags>`; api.tensorboards does.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

GRACE_SECONDS = 10.0
"""TensorBoard exits on SIGTERM after its exit handlers; past this it is ended outright."""


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
    threading.Thread(target=end_with_parent, name="end-with-server", daemon=True).start()
    from tensorboard.main import run_main

    run_main()


if __name__ == "__main__":
    main()

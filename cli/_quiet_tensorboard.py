"""TensorBoard without TensorFlow's start-up noise, its HParams dashboard ticking every hparam the sweep varies
(api.tensorboard_assets): what `sweeper tensorboard` becomes (`python -m` this module).

TensorBoard imports TensorFlow, whose C++ side logs through absl before anything configures it: those
early lines ("oneDNN custom operations are on", "Could not find cuda drivers", "failed call to cuInit")
ignore TF_CPP_MIN_LOG_LEVEL and go straight to file descriptor 2. So the descriptor itself is read here,
through a pipe, and every line but those and TensorBoard's advisory about its fast loader passes on.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] .*"  # absl's format: level, date, time, thread, file:line]
    r"|NOTE: Using experimental fast data loading logic\. To disable, pass"
    r"|\s+\"--load_fast=false\" and report issues on GitHub\. More details:"
    r"|\s+https://github\.com/tensorflow/tensorboard/issues/4784"
    r"|\s*)$")
"""Lines that say nothing to a person opening a sweep's dashboard; fatal errors (F...) still pass."""


def is_noise(line: str) -> bool:
    return NOISE.match(line.rstrip("\r\n")) is not None


def filter_stderr() -> None:
    """From now on, whatever this process writes to descriptor 2 passes through `is_noise` first."""
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as lines, os.fdopen(terminal, "wb", buffering=0) as out:
            for line in lines:
                if not is_noise(line.decode(errors="replace")):
                    out.write(line)

    forwarder = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    forwarder.start()

    def drain() -> None:
        # Closing descriptor 2 ends the pipe, so the last lines (TensorBoard's goodbye) get through.
        sys.stderr.flush()
        os.close(2)
        forwarder.join(timeout=1)

    atexit.register(drain)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # what absl logs after it is configured
    filter_stderr()
    # The server's TensorBoard assets, so this dashboard too ticks every hparam the sweep varies.
    from api.tensorboard_assets import run_tensorboard

    run_tensorboard()


if __name__ == "__main__":
    main()

"""`sweeper tensorboard` prints TensorBoard's own lines and none of TensorFlow's start-up noise."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cli._quiet_tensorboard import is_noise

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796396500.619945    3609 port.cc:153] oneDNN custom operations are on. You may see slightly",
    "I0000 00:00:1796396500.626676    3609 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
    "will not be used.",
    "E0000 00:00:1796396505.560137    3609 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
    "W1204 14:03:11.123456   12 cuda_dnn.cc:8310] Unable to register cuDNN factory",
    "NOTE: Using experimental fast data loading logic. To disable, pass",
    '    "--load_fast=false" and report issues on GitHub. More details:',
    "    https://github.com/tensorflow/tensorboard/issues/4784",
    "",
]
KEPT = [
    "TensorBoard 2.21.0 at http://127.0.0.1:6006/ (Press CTRL+C to quit)",
    "Traceback (most recent call last):",
    "OSError: [Errno 98] Address already in use",
    "F0000 00:00:1796396505.560137    3609 platform.cc:52] Check failed: something fatal",
]


@pytest.mark.parametrize("line", NOISE)
def test_tensorflows_start_up_lines_are_noise(line: str) -> None:
    assert is_noise(line + "\n")


@pytest.mark.parametrize("line", KEPT)
def test_tensorboards_own_lines_and_errors_pass(line: str) -> None:
    assert not is_noise(line + "\n")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_sweeper_tensorboard_prints_only_where_to_open_it_and_ticks_every_varying_hparam(tmp_path: Path) -> None:
    (tmp_path / "runs" / "1").mkdir(parents=True)
    port = free_port()
    command = [sys.executable, "-m", "cli", "tensorboard", "1", "--logdir", str(tmp_path / "runs"), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "COLUMNS": "200"})
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("Press CTRL+C to quit" in line for line in lines):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        # The dashboard's bundle as this TensorBoard serves it: the server's, ticking every varying hparam.
        bundle = httpx.get(f"http://127.0.0.1:{port}/index.js", timeout=30).text
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
    lines += rest.splitlines()

    assert lines[0] == f"TensorBoard for sweep 1: http://127.0.0.1:{port}/#hparams", lines
    assert any(line.startswith("TensorBoard ") and f":{port}/" in line and "CTRL+C" in line for line in lines), lines
    assert not [line for line in lines if is_noise(line + "\n") or "tensorflow" in line.lower()], lines
    assert "filter(h=>h.info.differs)" in bundle and "Math.min(5," in bundle

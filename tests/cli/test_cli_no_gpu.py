"""`--gpus none` asks no GPU library anything: neither nvidia-smi nor NVML in the supervisor, nor TensorFlow's
device list in a CPU worker (whose GPUs are hidden)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.server import RunningServer
from workers.supervisor import run_workers


@pytest.fixture
def recording_gpu_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An nvidia-smi on PATH and a pynvml module on the import path that each leave a file when used, for
    this process and the worker processes it starts; the folder they leave their files in."""
    calls = tmp_path / "calls"
    calls.mkdir()
    tools = tmp_path / "tools"
    tools.mkdir()
    smi = tools / "nvidia-smi"
    smi.write_text(f'#!/bin/sh\ntouch "{calls}/nvidia-smi"\necho "0, 16384, Tesla T4"\n')
    smi.chmod(0o755)
    (tools / "pynvml.py").write_text(f'open("{calls}/pynvml", "w").close()\n'
                                     'def nvmlInit():\n    raise RuntimeError("no driver here")\n')
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", f"{tools}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.syspath_prepend(str(tools))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    return calls


def test_gpus_none_starts_cpu_workers_without_asking_nvml_or_nvidia_smi(
        recording_gpu_tools: Path, server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_workers(server.url, gpus="none", cpu_workers=1, idle_exit=0.5) == 0

    assert "Starting 1 CPU worker(s)" in capsys.readouterr().out
    assert sorted(path.name for path in recording_gpu_tools.iterdir()) == []


def test_gpus_all_does_ask_them(recording_gpu_tools: Path) -> None:
    # The recording tools work: discovery proper reaches them.
    from workers.gpus import discover_gpus

    assert [gpu.index for gpu in discover_gpus()] == ["0"]
    assert sorted(path.name for path in recording_gpu_tools.iterdir()) == ["nvidia-smi", "pynvml"]


def test_a_cpu_worker_configures_no_gpu_and_does_not_load_tensorflow_for_it() -> None:
    probe = ("import sys\nfrom sweeper.training import devices\ndevices.configure_gpus(None)\n"
             "devices.configure_gpus(512)\nprint('tensorflow' in sys.modules)")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1"}

    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60,
                            check=True)

    assert result.stdout.strip() == "False", result.stderr

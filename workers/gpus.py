"""Finding the GPUs of this host, choosing which ones get workers, and sharing one among several.

Discovery asks NVML (the `pynvml` module of nvidia-ml-py), or `nvidia-smi` where NVML cannot be
loaded, and never TensorFlow: importing TensorFlow in the supervisor would claim every GPU for a
process that trains nothing, before the children are pinned to theirs. Both number GPUs in PCI bus
order, which is how the supervisor makes CUDA number them too.
"""

from __future__ import annotations

import importlib
import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sweeper import SweeperError

__all__ = ["Gpu", "GpuSelectionError", "discover_gpus", "memory_share_mb", "select_gpus", "wants_no_gpu"]

logger = logging.getLogger(__name__)

_QUERY = ["nvidia-smi", "--query-gpu=index,memory.total,name", "--format=csv,noheader,nounits"]
_AUTO: Any = object()

MEMORY_MARGIN_MB = 768
"""Left out of each worker's share of a shared GPU: what a process uses outside TensorFlow's memory
limit (the CUDA context, cuDNN and cuBLAS workspaces) is a few hundred MB."""


class GpuSelectionError(SweeperError, ValueError):
    """A `--gpus` selection names a GPU this host does not have, is malformed, or cannot be shared so."""


@dataclass(frozen=True)
class Gpu:
    """One GPU as the driver numbers it; its memory in MB when known."""

    index: str
    memory_mb: int | None = None
    name: str = ""


def discover_gpus(timeout: float = 15.0, nvml: Any = _AUTO) -> list[Gpu]:
    """The host's GPUs, or [] when there is no usable driver.

    `nvml` is the NVML module to ask (by default `pynvml`, if it imports); None skips it. When NVML is
    missing or fails, `nvidia-smi` answers instead, within `timeout` seconds.
    """
    module = _import_nvml() if nvml is _AUTO else nvml
    if module is not None:
        try:
            return _ask_nvml(module)
        except Exception as error:  # NVMLError and its many subclasses, or a broken binding
            logger.info("NVML cannot list GPUs (%s: %s); asking nvidia-smi", type(error).__name__, error)
    return _ask_nvidia_smi(timeout)


def wants_no_gpu(selection: str) -> bool:
    """Whether a `--gpus` selection is `none`: then no GPU library is asked anything (discovery is skipped)."""
    return selection.strip().lower() == "none"


def select_gpus(selection: str, discovered: Sequence[Gpu]) -> list[Gpu]:
    """Resolve `all`, `none` or a comma-separated list of indices (`0,2`) against the discovered GPUs."""
    choice = selection.strip().lower()
    if choice == "all":
        return list(discovered)
    if choice == "none":
        return []
    wanted = [part.strip() for part in choice.split(",")]
    if not choice or any(not part for part in wanted):
        raise GpuSelectionError(f"GPU selection must be 'all', 'none' or indices like '0,2', but got {selection!r}")
    by_index = {gpu.index: gpu for gpu in discovered}
    known = ", ".join(by_index) if by_index else "none (NVML and nvidia-smi are missing or failed)"
    chosen: list[Gpu] = []
    for index in wanted:
        if index not in by_index:
            raise GpuSelectionError(f"unknown GPU index {index!r} in --gpus {selection!r}; discovered GPUs: {known}")
        if by_index[index] not in chosen:
            chosen.append(by_index[index])
    return chosen


def memory_share_mb(gpu: Gpu, trials_per_gpu: int) -> int | None:
    """Each worker's memory limit on `gpu` shared by `trials_per_gpu` workers: an equal share less a
    margin; None when the GPU is not shared or its memory is unknown (each worker then grows its own)."""
    if trials_per_gpu < 1:
        raise GpuSelectionError(f"`trials_per_gpu >= 1` must hold, but got {trials_per_gpu}")
    if trials_per_gpu == 1 or gpu.memory_mb is None:
        return None
    share = gpu.memory_mb // trials_per_gpu - MEMORY_MARGIN_MB
    if share < 256:
        raise GpuSelectionError(f"--trials-per-gpu {trials_per_gpu} leaves {max(share, 0)} MB per trial on GPU "
                                f"{gpu.index} ({gpu.memory_mb} MB, less {MEMORY_MARGIN_MB} MB per process); "
                                f"each trial needs at least 256 MB")
    return share


def _import_nvml() -> Any:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        logger.debug("pynvml (nvidia-ml-py) is not installed; asking nvidia-smi")
        return None


def _ask_nvml(nvml: Any) -> list[Gpu]:
    nvml.nvmlInit()
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            gpus.append(Gpu(index=str(index), memory_mb=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // 2**20,
                            name=name.decode() if isinstance(name, bytes) else str(name)))
        return gpus
    finally:
        nvml.nvmlShutdown()


def _ask_nvidia_smi(timeout: float) -> list[Gpu]:
    try:
        completed = subprocess.run(_QUERY, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        logger.debug("nvidia-smi not found; assuming no GPUs")
        return []
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.warning("nvidia-smi could not be run (%s); assuming no GPUs", error)
        return []
    if completed.returncode != 0:
        # A machine with the tool but no working driver: treat as GPU-less rather than fail the worker.
        reason = (completed.stderr or completed.stdout).strip().splitlines()
        logger.warning("nvidia-smi exited with code %d (%s); assuming no GPUs", completed.returncode,
                       reason[0] if reason else "no output")
        return []
    gpus = []
    for line in completed.stdout.splitlines():
        if not line.strip():
            continue
        index, memory, name = (part.strip() for part in (line.split(",", 2) + ["", ""])[:3])
        try:
            memory_mb: int | None = int(float(memory))
        except ValueError:
            memory_mb = None  # "[N/A]" on some boards
        gpus.append(Gpu(index=index, memory_mb=memory_mb, name=name))
    return gpus

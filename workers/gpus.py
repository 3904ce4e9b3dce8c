"""Finding the GPUs of this host and choosing which ones get a worker.

Discovery asks `nvidia-smi`, never TensorFlow: importing TensorFlow in the supervisor would claim
every GPU for a process that trains nothing, before the children are pinned to theirs.
"""

from __future__ import annotations

import logging
import subprocess

from sweeper import SweeperError

__all__ = ["GpuSelectionError", "discover_gpus", "select_gpus"]

logger = logging.getLogger(__name__)

_QUERY = ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"]


class GpuSelectionError(SweeperError, ValueError):
    """A `--gpus` selection names a GPU this host does not have, or is malformed."""


def discover_gpus(timeout: float = 15.0) -> list[str]:
    """GPU indices as nvidia-smi numbers them (PCI bus order), or [] when there is no usable driver."""
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
    return [line.strip() for line in completed.stdout.splitlines() if line.strip()]


def select_gpus(selection: str, discovered: list[str]) -> list[str]:
    """Resolve `all`, `none` or a comma-separated list of indices (`0,2`) against the discovered GPUs."""
    choice = selection.strip().lower()
    if choice == "all":
        return list(discovered)
    if choice == "none":
        return []
    wanted = [part.strip() for part in choice.split(",")]
    if not choice or any(not part for part in wanted):
        raise GpuSelectionError(f"GPU selection must be 'all', 'none' or indices like '0,2', but got {selection!r}")
    known = ", ".join(discovered) if discovered else "none (nvidia-smi is missing or failed)"
    chosen: list[str] = []
    for index in wanted:
        if index not in discovered:
            raise GpuSelectionError(f"unknown GPU index {index!r} in --gpus {selection!r}; discovered GPUs: {known}")
        if index not in chosen:
            chosen.append(index)
    return chosen

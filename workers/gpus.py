"""Finding the GPUs of this host, choosing which ones get workers, grouping them for multi-GPU trials,
and sharing one (or a group) among several workers.

Discovery asks NVML (the `pynvml` module of nvidia-ml-py), or `nvidia-smi` where NVML cannot be
loaded, and never TensorFlow: importing TensorFlow in the supervisor would claim every GPU for a
process that trains nothing, before the children are pinned to theirs. Both number GPUs in PCI bus
order, which is how the supervisor makes CUDA number them too.

For trials of more than one GPU (`train.gpus_per_trial`, `--gpus-per-trial`), GPUs are grouped by how
closely they are linked, as NVML or `nvidia-smi topo -m` reports it: GPUs joined by NVLink, then those
behind one PCIe switch, train together, since MirroredStrategy's all-reduce crosses that link every step.
Where neither reports a topology, groups follow the index order.
"""

from __future__ import annotations

import importlib
import logging
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sweeper import SweeperError

__all__ = ["Gpu", "GpuLinks", "GpuSelectionError", "discover_gpus", "discover_links", "group_gpus",
           "group_memory_share_mb", "memory_share_mb", "plan_groups", "parse_topology", "select_gpus", "wants_no_gpu"]

logger = logging.getLogger(__name__)

_QUERY = ["nvidia-smi", "--query-gpu=index,memory.total,name", "--format=csv,noheader,nounits"]
_TOPOLOGY = ["nvidia-smi", "topo", "-m"]

GpuLinks = Mapping[frozenset[str], int]
"""How closely each pair of GPUs (by index) is linked: higher is closer. NVLink with k links is 100 + k; then
PIX (one PCIe switch) 5, PXB (several switches) 4, PHB (the CPU's host bridge) 3, NODE (one NUMA node) 2,
SYS (across the CPUs' interconnect) 1. A pair not in it counts as 0."""

_PCIE_CLOSENESS = {"PIX": 5, "PXB": 4, "PHB": 3, "NODE": 2, "SYS": 1}
# NVML's nvmlGpuTopologyLevel_t (INTERNAL 0, SINGLE 10, MULTIPLE 20, HOSTBRIDGE 30, NODE 40, SYSTEM 50) in
# the same closeness as nvidia-smi's words for them.
_NVML_LEVEL_CLOSENESS = {0: 6, 10: 5, 20: 4, 30: 3, 40: 2, 50: 1}
_NVLINK = re.compile(r"NV(\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
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


def group_memory_share_mb(group: Sequence[Gpu], trials_per_gpu: int) -> int | None:
    """Each worker's memory limit on every GPU of a group that `trials_per_gpu` workers share: the smallest
    GPU's share (TensorFlow takes one limit for all of a process's GPUs); None when the group is not shared
    or a GPU's memory is unknown (each worker then grows its own)."""
    shares = [memory_share_mb(gpu, trials_per_gpu) for gpu in group]
    return None if any(share is None for share in shares) else min(share for share in shares if share is not None)


def plan_groups(gpus: Sequence[Gpu], *, trials_per_gpu: int = 1, gpus_per_trial: int = 1, cpu_devices: int = 1,
                links: GpuLinks | None = None) -> list[tuple[Gpu, ...]]:
    """The groups a supervisor starts workers on, after refusing the combinations of `--gpus`,
    `--gpus-per-trial`, `--trials-per-gpu` and `--cpu-devices` that cannot work (GpuSelectionError, naming
    the options).

    How they combine: the selected GPUs form groups of `gpus_per_trial` (`group_gpus`); each group gets
    `trials_per_gpu` workers, which all see the group's GPUs, each capped to an equal share of every GPU's
    memory. With no GPU selected, CPU workers run instead, each presenting `cpu_devices` devices: trials
    of up to that many GPUs run on them, with MirroredStrategy over the CPU's logical devices.
    """
    for option, value in (("--trials-per-gpu", trials_per_gpu), ("--gpus-per-trial", gpus_per_trial),
                          ("--cpu-devices", cpu_devices)):
        if value < 1:
            raise GpuSelectionError(f"`{option} >= 1` must hold, but got {value}")
    if not gpus:
        if gpus_per_trial > cpu_devices:
            raise GpuSelectionError(
                f"--gpus-per-trial {gpus_per_trial} needs GPUs, but no GPU is selected (--gpus none, or none was "
                f"found); for testing on a CPU, --cpu-devices {gpus_per_trial} splits each CPU worker into "
                f"{gpus_per_trial} devices")
        return []
    if cpu_devices > 1:
        raise GpuSelectionError(f"--cpu-devices {cpu_devices} splits the CPU of CPU workers, but --gpus selects "
                                f"GPU(s) {','.join(gpu.index for gpu in gpus)}; use it with --gpus none")
    groups = group_gpus(gpus, gpus_per_trial, links)
    for group in groups:
        group_memory_share_mb(group, trials_per_gpu)  # a GPU too small to share raises
    return groups


def group_gpus(gpus: Sequence[Gpu], size: int, links: GpuLinks | None = None) -> list[tuple[Gpu, ...]]:
    """The GPUs in groups of `size`, each trained on by one worker.

    With `links`, each group starts from the lowest-indexed GPU left and takes the GPUs left that are most
    closely linked to all of its members (ties go to the lower index): pairs on NVLink or behind one PCIe
    switch end up together even when their indices are not adjacent. Without, groups follow the order given.
    GpuSelectionError when the GPUs do not divide into groups of `size`.
    """
    if size < 1:
        raise GpuSelectionError(f"`--gpus-per-trial >= 1` must hold, but got {size}")
    if len(gpus) < size or len(gpus) % size:
        indices = ",".join(gpu.index for gpu in gpus) or "none"
        fits = f"select {size} GPUs or a multiple of {size} with --gpus" if len(gpus) >= size else \
            f"select at least {size} GPUs with --gpus, or lower --gpus-per-trial to {len(gpus) or 1}"
        raise GpuSelectionError(f"--gpus-per-trial {size} needs the selected GPUs to form groups of {size}, but "
                                f"--gpus selects {len(gpus)} GPU(s) ({indices}); {fits}")
    left = list(gpus)
    groups: list[tuple[Gpu, ...]] = []
    while left:
        group = [left.pop(0)]
        while len(group) < size:
            def closeness(position: int) -> tuple[int, int]:
                candidate = left[position].index
                weakest = min((links or {}).get(frozenset((candidate, member.index)), 0) for member in group)
                return weakest, -position

            group.append(left.pop(max(range(len(left)), key=closeness)))
        groups.append(tuple(group))
    return groups


def discover_links(gpus: Sequence[Gpu], timeout: float = 15.0, nvml: Any = _AUTO) -> GpuLinks:
    """How closely the host's GPUs are linked (see `GpuLinks`), from NVML or `nvidia-smi topo -m`; empty
    when neither reports a topology, and groups then follow the index order."""
    module = _import_nvml() if nvml is _AUTO else nvml
    if module is not None:
        try:
            links = _ask_nvml_links(module, [gpu.index for gpu in gpus])
            if links:
                return links
        except Exception as error:  # NVMLError, a binding without the topology calls
            logger.info("NVML cannot report the GPU topology (%s: %s); asking nvidia-smi", type(error).__name__,
                        error)
    try:
        completed = subprocess.run(_TOPOLOGY, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.info("nvidia-smi topo -m could not be run (%s); grouping GPUs by index", error)
        return {}
    if completed.returncode != 0:
        logger.info("nvidia-smi topo -m exited with code %d; grouping GPUs by index", completed.returncode)
        return {}
    return parse_topology(completed.stdout)


def parse_topology(text: str) -> dict[frozenset[str], int]:
    """The GPU links in the matrix `nvidia-smi topo -m` prints (see `GpuLinks`).

    Its header names the GPU columns (GPU0 GPU1 ..., then NICs and affinities); each GPU's row gives its
    link to every GPU column in that order: X (itself), NV<k>, PIX, PXB, PHB, NODE or SYS.
    """
    lines = [_ANSI.sub("", line) for line in text.splitlines()]
    header = next((line.split() for line in lines if re.match(r"^\s+GPU\d+", line)), None)
    if header is None:
        return {}
    columns = [cell[3:] for cell in header if re.fullmatch(r"GPU\d+", cell)]
    links: dict[frozenset[str], int] = {}
    for line in lines:
        cells = line.split()
        if not cells or not re.fullmatch(r"GPU\d+", cells[0]):
            continue
        row = cells[0][3:]
        for column, word in zip(columns, cells[1:1 + len(columns)]):
            if column == row:
                continue
            nvlink = _NVLINK.fullmatch(word)
            closeness = 100 + int(nvlink[1]) if nvlink else _PCIE_CLOSENESS.get(word)
            if closeness is not None:
                links[frozenset((row, column))] = max(closeness, links.get(frozenset((row, column)), 0))
    return links


def _ask_nvml_links(nvml: Any, indices: Sequence[str]) -> dict[frozenset[str], int]:
    nvml.nvmlInit()
    try:
        handles = {index: nvml.nvmlDeviceGetHandleByIndex(int(index)) for index in indices}
        bus_ids = {_bus_id(nvml.nvmlDeviceGetPciInfo(handle)): index for index, handle in handles.items()}
        links: dict[frozenset[str], int] = {}
        for position, first in enumerate(indices):
            for second in indices[position + 1:]:
                level = int(nvml.nvmlDeviceGetTopologyCommonAncestor(handles[first], handles[second]))
                links[frozenset((first, second))] = _NVML_LEVEL_CLOSENESS.get(level, 0)
        for index, handle in handles.items():
            for peer, count in _nvlink_peers(nvml, handle, bus_ids).items():
                if peer != index:
                    links[frozenset((index, peer))] = max(links.get(frozenset((index, peer)), 0), 100 + count)
        return links
    finally:
        nvml.nvmlShutdown()


def _nvlink_peers(nvml: Any, handle: Any, bus_ids: Mapping[str, str]) -> dict[str, int]:
    """The GPUs (by index) this one reaches over NVLink, with how many of its links reach each."""
    peers: dict[str, int] = {}
    for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))):
        try:
            if not nvml.nvmlDeviceGetNvLinkState(handle, link):
                continue
            peer = bus_ids.get(_bus_id(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link)))
        except Exception:  # no such link on this board, or no NVLink at all: NVML raises per link
            continue
        if peer is not None:
            peers[peer] = peers.get(peer, 0) + 1
    return peers


def _bus_id(pci: Any) -> str:
    bus_id = getattr(pci, "busId", "")
    return (bus_id.decode() if isinstance(bus_id, bytes) else str(bus_id)).lower()


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

"""Accelerator settings that must be made before TensorFlow first touches a GPU.

A worker sees one GPU (the supervisor sets `CUDA_VISIBLE_DEVICES`). Alone on it, the worker lets
TensorFlow's memory grow as needed. When several workers share the GPU (`--trials-per-gpu`), each
gets a fixed share instead, named by `SWEEPER_GPU_MEMORY_MB`: growing workers would each take what the
others need, and TensorFlow cannot combine growth with a limit. A worker of a group of GPUs sees them all
(`CUDA_VISIBLE_DEVICES=0,1`); its limit applies to each.

A CPU worker may present several devices (`SWEEPER_CPU_DEVICES`, set by `sweeper worker --cpu-devices N`):
its CPU is split into N TensorFlow logical devices, over which a trial of `train.gpus_per_trial` N runs
MirroredStrategy as it would over N GPUs. It trains no faster; it is for testing multi-GPU trials, and
trying a spec of them out, where there is no GPU.
"""

from __future__ import annotations

import os

MEMORY_LIMIT_VARIABLE = "SWEEPER_GPU_MEMORY_MB"
"""The environment variable through which the supervisor gives a worker its share of GPU memory, in MB."""
CPU_DEVICES_VARIABLE = "SWEEPER_CPU_DEVICES"
"""The environment variable through which the supervisor tells a CPU worker how many devices to split its CPU
into (unset: 1)."""


def cpu_devices_from_environment(environ: dict[str, str] | None = None) -> int:
    """How many logical devices to split the CPU into, from `SWEEPER_CPU_DEVICES` (1 when unset or empty)."""
    value = (os.environ if environ is None else environ).get(CPU_DEVICES_VARIABLE, "").strip()
    if not value:
        return 1
    try:
        devices = int(value)
    except ValueError:
        raise ValueError(f"{CPU_DEVICES_VARIABLE} must be a whole number of devices >= 1, but got {value!r}") from None
    if not 1 <= devices <= 64:
        raise ValueError(f"{CPU_DEVICES_VARIABLE} must be a whole number of devices from 1 to 64, but got {value!r}")
    return devices


def split_cpu(devices: int) -> None:
    """Split the CPU into `devices` TensorFlow logical devices (CPU:0, CPU:1, ...); 1 leaves it whole.

    Must run before TensorFlow initialises its devices, which refuses the setting afterwards.
    """
    if devices <= 1:
        return
    import tensorflow as tf

    [cpu] = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)


def memory_limit_from_environment(environ: dict[str, str] | None = None) -> int | None:
    """The worker's GPU memory limit in MB from `SWEEPER_GPU_MEMORY_MB`, or None when it is unset or empty."""
    value = (os.environ if environ is None else environ).get(MEMORY_LIMIT_VARIABLE, "").strip()
    if not value:
        return None
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(f"{MEMORY_LIMIT_VARIABLE} must be a whole number of MB > 0, but got {value!r}") from None
    if limit <= 0:
        raise ValueError(f"{MEMORY_LIMIT_VARIABLE} must be a whole number of MB > 0, but got {value!r}")
    return limit


def gpus_hidden(environ: dict[str, str] | None = None) -> bool:
    """Whether `CUDA_VISIBLE_DEVICES` hides every GPU (-1, as the supervisor sets for a CPU worker)."""
    return (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES", "").strip() == "-1"


def configure_gpus(memory_limit_mb: int | None = None) -> None:
    """Give each visible GPU a logical device of `memory_limit_mb` MB, or with None let memory grow.

    Must run before any op is placed on a GPU; TensorFlow refuses either setting afterwards. A no-op on
    a machine without GPUs, and one that asks TensorFlow nothing when every GPU is hidden (a CPU worker).
    """
    if gpus_hidden():
        return
    if memory_limit_mb is None:
        enable_memory_growth()
        return
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.set_logical_device_configuration(
            gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=memory_limit_mb)])


def enable_memory_growth() -> None:
    """Let TensorFlow grow GPU memory as needed instead of taking all of it at start (TF1's `allow_growth`).

    Must run before any op is placed on a GPU; TensorFlow refuses the setting afterwards. A no-op on a
    machine without GPUs.
    """
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)

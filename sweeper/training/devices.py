"""Accelerator settings that must be made before TensorFlow first touches a GPU.

A worker sees one GPU (the supervisor sets `CUDA_VISIBLE_DEVICES`). Alone on it, the worker lets
TensorFlow's memory grow as needed. When several workers share the GPU (`--trials-per-gpu`), each
gets a fixed share instead, named by `SWEEPER_GPU_MEMORY_MB`: growing workers would each take what the
others need, and TensorFlow cannot combine growth with a limit.
"""

from __future__ import annotations

import os

MEMORY_LIMIT_VARIABLE = "SWEEPER_GPU_MEMORY_MB"
"""The environment variable through which the supervisor gives a worker its share of GPU memory, in MB."""


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

"""Accelerator settings that must be made before TensorFlow first touches a GPU."""

from __future__ import annotations


def enable_memory_growth() -> None:
    """Let TensorFlow grow GPU memory as needed instead of taking all of it at start (TF1's `allow_growth`).

    Must run before any op is placed on a GPU; TensorFlow refuses the setting afterwards. A no-op on a
    machine without GPUs.
    """
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)

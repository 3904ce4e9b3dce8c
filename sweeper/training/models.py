"""Built-in model builders, registered as "mlp" and "cnn".

A model builder takes the trial's hparams and the dataset's `DatasetInfo` and returns an uncompiled
Keras classifier with a softmax head; the runner compiles it. Hparams a builder does not know are
ignored (they may be for the optimizer or the schedule), and missing ones take the defaults below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from sweeper.training.datasets import DatasetInfo


def build_mlp(hparams: Mapping[str, Any], info: DatasetInfo) -> keras.Model:
    """Flattened input, `depth` blocks of Dense(`units`, `activation`) + Dropout(`dropout`), softmax head."""
    units = _int(hparams, "units", 64)
    depth = _int(hparams, "depth", 1)
    dropout = _rate(hparams, "dropout", 0.0)
    activation = str(hparams.get("activation", "relu"))

    inputs = keras.Input(shape=info.input_shape)
    x = keras.layers.Flatten()(inputs)
    for _ in range(depth):
        x = keras.layers.Dense(units, activation=activation)(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(info.num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="mlp")


def build_cnn(hparams: Mapping[str, Any], info: DatasetInfo) -> keras.Model:
    """`blocks` of Conv2D + MaxPooling (filters doubling per block), then Dense(`dense_units`), softmax head.

    Convolutions and pooling use "same" padding, so small images (8x8 digits) survive several blocks.
    """
    if len(info.input_shape) != 3:
        raise ValueError(f"the cnn model needs images shaped (height, width, channels), "
                         f"but the dataset's input shape is {info.input_shape}")
    filters = _int(hparams, "filters", 16)
    kernel_size = _int(hparams, "kernel_size", 3)
    blocks = _int(hparams, "blocks", 1)
    dropout = _rate(hparams, "dropout", 0.0)
    dense_units = _int(hparams, "dense_units", 32)
    activation = str(hparams.get("activation", "relu"))

    inputs = keras.Input(shape=info.input_shape)
    x = inputs
    for block in range(blocks):
        x = keras.layers.Conv2D(filters * 2**block, kernel_size, padding="same", activation=activation)(x)
        x = keras.layers.MaxPooling2D(pool_size=2, padding="same")(x)
    x = keras.layers.Flatten()(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(dense_units, activation=activation)(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(info.num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="cnn")


def _int(hparams: Mapping[str, Any], name: str, default: int) -> int:
    value = hparams.get(name, default)
    # Values arrive through JSON, so a whole number may come as a float (64.0); 64.5 is a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not float(value).is_integer() or value < 1:
        raise ValueError(f"hparam {name} must be a positive whole number, but got {value!r}")
    return int(value)


def _rate(hparams: Mapping[str, Any], name: str, default: float) -> float:
    value = hparams.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"hparam {name} must be a number in [0, 1), but got {value!r}")
    return float(value)

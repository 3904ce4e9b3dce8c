"""Built-in model builders, registered as "mlp" and "cnn".

A model builder takes the trial's hparams and the dataset's `DatasetInfo` and returns an uncompiled
Keras classifier with a softmax head; the runner compiles it. Hparams a builder does not know are
ignored (they may be for the optimizer or the schedule), and missing ones take the defaults below.

Builders run under the trial's Keras dtype policy: with mixed precision, layers compute in float16,
so the softmax head is pinned to float32 (a float16 softmax loses the small probabilities that the
loss takes the log of). A plugin's builder should do the same.
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
    return keras.Model(inputs, _softmax_head(x, info), name="mlp")


def build_cnn(hparams: Mapping[str, Any], info: DatasetInfo) -> keras.Model:
    """`blocks` of Conv2D + MaxPooling (filters doubling per block), then Dense(`dense_units`), softmax head.

    Convolutions and pooling use "same" padding, so small images (8x8 digits) survive several blocks.
    With `batch_norm` (default false) each convolution is followed by BatchNormalization before its
    activation, and has no bias of its own (the normalization's offset replaces it).
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
    batch_norm = _bool(hparams, "batch_norm", False)

    inputs = keras.Input(shape=info.input_shape)
    x = inputs
    for block in range(blocks):
        if batch_norm:
            x = keras.layers.Conv2D(filters * 2**block, kernel_size, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.Activation(activation)(x)
        else:
            x = keras.layers.Conv2D(filters * 2**block, kernel_size, padding="same", activation=activation)(x)
        x = keras.layers.MaxPooling2D(pool_size=2, padding="same")(x)
    x = keras.layers.Flatten()(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(dense_units, activation=activation)(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout)(x)
    return keras.Model(inputs, _softmax_head(x, info), name="cnn")


def _softmax_head(x: Any, info: DatasetInfo) -> Any:
    # float32 whatever the dtype policy: see the module's docstring.
    return keras.layers.Dense(info.num_classes, activation="softmax", dtype="float32")(x)


def _int(hparams: Mapping[str, Any], name: str, default: int) -> int:
    value = hparams.get(name, default)
    # Values arrive through JSON, so a whole number may come as a float (64.0); 64.5 is a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not float(value).is_integer() or value < 1:
        raise ValueError(f"hparam {name} must be a positive whole number, but got {value!r}")
    return int(value)


def _bool(hparams: Mapping[str, Any], name: str, default: bool) -> bool:
    value = hparams.get(name, default)
    # Strict: a string like "false" would otherwise count as true.
    if not isinstance(value, bool):
        raise ValueError(f"hparam {name} must be true or false, but got {value!r}")
    return value


def _rate(hparams: Mapping[str, Any], name: str, default: float) -> float:
    value = hparams.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"hparam {name} must be a number in [0, 1), but got {value!r}")
    return float(value)

"""A worked example of a sweeper plugin: one model and a dataset in both forms a plugin may return.

Use it with `--plugins sweeper_example_plugin` (with this folder on PYTHONPATH), or install this folder
(`pip install ./examples/plugins`) to register the same names through its entry points. See
docs/plugins.md.

Keras and sweeper.training are imported inside the functions, not at the top: the server imports this
module only to learn the names, and so never loads TensorFlow. The functions run on the workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

import sweeper

if TYPE_CHECKING:
    from sweeper.training.datasets import Dataset, DatasetInfo, DataSplits

ARMS = 3
"""Classes of the spirals dataset: one per spiral arm."""
POINTS_PER_ARM = 200


def build_spiral_mlp(hparams: Mapping[str, Any], info: DatasetInfo) -> Any:
    """A small MLP for 2-D points: `layers` Dense(`units`, tanh) layers and a softmax over the classes.

    Reads its own hparams (`units`, `layers`), with defaults for those a sweep does not set.
    """
    import keras

    units = int(hparams.get("units", 32))
    layers = int(hparams.get("layers", 2))
    inputs = keras.Input(shape=info.input_shape)
    x = inputs
    for _ in range(layers):
        x = keras.layers.Dense(units, activation="tanh")(x)
    outputs = keras.layers.Dense(info.num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="spiral_mlp")


def _spirals(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """ARMS interleaved noisy spiral arms in the plane, shuffled; x float32 (n, 2), y int64 labels."""
    rng = np.random.default_rng(seed)
    radius = np.tile(np.linspace(0.1, 1.0, POINTS_PER_ARM), ARMS)
    labels = np.repeat(np.arange(ARMS), POINTS_PER_ARM)
    angle = 4.0 * radius + labels * (2 * np.pi / ARMS) + rng.normal(scale=0.15, size=radius.shape)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).astype("float32")
    order = rng.permutation(len(x))
    return x[order], labels[order].astype("int64")


def load_spirals() -> Dataset:
    """All examples as arrays: the runner holds out the spec's `train.validation_split` for validation."""
    from sweeper.training.datasets import Dataset, DatasetInfo

    x, y = _spirals(seed=0)
    return Dataset(x=x, y=y, info=DatasetInfo(input_shape=(2,), num_classes=ARMS))


def load_spirals_splits() -> DataSplits:
    """A split of the dataset's own: a tf.data training part and an array validation part.

    `train.validation_split` does not apply; the runner shuffles and batches the parts itself, so they
    hold single, unbatched (x, y) examples.
    """
    import tensorflow as tf

    from sweeper.training.datasets import DatasetInfo, DataSplits

    x_train, y_train = _spirals(seed=1)
    x_val, y_val = _spirals(seed=2)
    return DataSplits(train=tf.data.Dataset.from_tensor_slices((x_train, y_train)), validation=(x_val, y_val),
                      info=DatasetInfo(input_shape=(2,), num_classes=ARMS))


# Registered on import. The same names (and the same functions) are in pyproject.toml's entry points,
# so an installed plugin that is also named with --plugins does not clash with itself.
# Declaring the hparams the builder reads makes a spec that names another (a typo) an error at submit time.
sweeper.register_model("spiral_mlp", build_spiral_mlp, hparams=["units", "layers"])
sweeper.register_dataset("spirals", load_spirals)
sweeper.register_dataset("spirals_splits", load_spirals_splits)

"""Built-in datasets and the per-process dataset cache.

A dataset builder takes no arguments and returns a `Dataset`: all examples as numpy arrays, already
shuffled, plus what a model builder needs to know about them. The runner splits off validation data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sweeper import _registry

_SHUFFLE_SEED = 0


@dataclass(frozen=True)
class DatasetInfo:
    input_shape: tuple[int, ...]
    """Shape of one example, without the batch dimension."""
    num_classes: int


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray
    y: np.ndarray
    """Integer class labels in [0, num_classes)."""
    info: DatasetInfo


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes); nothing is downloaded."""
    from sklearn import datasets as sk_datasets

    digits = sk_datasets.load_digits()
    # Pixels are integers 0..16 in this dataset.
    x = (digits.images / 16.0).astype("float32")[..., np.newaxis]
    y = digits.target.astype("int64")
    # Shuffled once with a fixed seed: the data are ordered by writer, and the validation split is
    # the last part of the data, so every trial must see the same, well-mixed split.
    order = np.random.default_rng(_SHUFFLE_SEED).permutation(len(x))
    return Dataset(x=x[order], y=y[order], info=DatasetInfo(input_shape=x.shape[1:], num_classes=10))


_cache: dict[str, Dataset] = {}


def load_dataset(name: str) -> Dataset:
    """The registered dataset `name`, loaded once per process: a worker's later trials reuse it."""
    if name not in _cache:
        dataset = _registry.datasets.get(name)()
        if not isinstance(dataset, Dataset):
            raise TypeError(f"dataset builder {name!r} must return a Dataset, but returned {type(dataset).__name__}")
        _cache[name] = dataset
    return _cache[name]

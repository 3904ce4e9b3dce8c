"""Built-in datasets, file datasets under the operator's data root, and the per-process dataset cache.

A dataset builder takes no arguments and returns a `Dataset`: all examples as numpy arrays, already
shuffled, plus what a model builder needs to know about them; the runner splits off validation data.
Or it returns `DataSplits`, a train and a validation part of its own (tf.data pipelines or arrays).
File datasets are named `npz:<path>` or `images:<folder>`, a path relative to the data root; a request
can name files there and nowhere else.

A worker process loads each dataset once and keeps it, with its train and validation parts as cached
`tf.data` pipelines (`training_data`): its later trials only shuffle and batch them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sweeper import _registry
from sweeper._errors import SweeperError

_SHUFFLE_SEED = 0
DEFAULT_DATA_ROOT = Path("data")
IMAGE_SIZE = (64, 64)
"""(height, width) every image of an `images:` dataset is resized to."""


class DatasetError(SweeperError, ValueError):
    """A dataset cannot be loaded: a path outside the data root, a missing file, or malformed contents."""


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


@dataclass(frozen=True)
class DataSplits:
    """A dataset that brings its own train/validation split, as a plugin's dataset function may return.

    Each part is a `tf.data.Dataset` of (features, label) pairs, unbatched, or an (x, y) pair of arrays.
    """

    train: Any
    validation: Any
    info: DatasetInfo


_data_root: ContextVar[Path | None] = ContextVar("sweeper_data_root", default=None)


def current_data_root() -> Path:
    """The data root of the trial being built (default ./data): model builders resolve files under it."""
    root = _data_root.get()
    return root if root is not None else DEFAULT_DATA_ROOT


@contextmanager
def using_data_root(root: Path | None) -> Iterator[None]:
    """Within the block, `current_data_root()` is `root` (or the default when None)."""
    token = _data_root.set(root)
    try:
        yield
    finally:
        _data_root.reset(token)


def _shuffled(x: np.ndarray, y: np.ndarray, num_classes: int) -> Dataset:
    # Shuffled once with a fixed seed: bundled data are ordered (by writer, by class), and the
    # validation split is the last part of the data, so every trial must see the same, well-mixed split.
    order = np.random.default_rng(_SHUFFLE_SEED).permutation(len(x))
    return Dataset(x=x[order], y=y[order], info=DatasetInfo(input_shape=tuple(x.shape[1:]), num_classes=num_classes))


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes); nothing is downloaded."""
    from sklearn import datasets as sk_datasets

    digits = sk_datasets.load_digits()
    # Pixels are integers 0..16 in this dataset.
    x = (digits.images / 16.0).astype("float32")[..., np.newaxis]
    y = digits.target.astype("int64")
    return _shuffled(x, y, num_classes=10)


def _load_tabular(loader_name: str) -> Dataset:
    from sklearn import datasets as sk_datasets

    bunch = getattr(sk_datasets, loader_name)()
    x = np.asarray(bunch.data, dtype="float64")
    # Features differ in scale by orders of magnitude (wine's proline is ~1000, its hue ~1), which
    # stalls plain SGD; standardising on the whole dataset is what a tabular baseline expects.
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    y = np.asarray(bunch.target, dtype="int64")
    return _shuffled(x.astype("float32"), y, num_classes=len(bunch.target_names))


def load_iris() -> Dataset:
    """scikit-learn's bundled iris: 150 examples, 4 standardised features, 3 classes."""
    return _load_tabular("load_iris")


def load_wine() -> Dataset:
    """scikit-learn's bundled wine: 178 examples, 13 standardised features, 3 classes."""
    return _load_tabular("load_wine")


def load_breast_cancer() -> Dataset:
    """scikit-learn's bundled breast cancer (Wisconsin): 569 examples, 30 standardised features, 2 classes."""
    return _load_tabular("load_breast_cancer")


def resolve_data_path(data_root: Path, relative: str, name: str | None = None) -> Path:
    """The real path of `relative` under `data_root`, refusing anything that would leave the root.

    `name` (e.g. 'npz:train.npz') is what error messages quote; it defaults to `relative`. Messages
    never show the absolute path, since they reach whoever submitted the sweep.
    """
    shown = name if name is not None else relative
    problem = _registry.data_path_problem(relative)
    if problem is not None:
        raise DatasetError(f"dataset path {shown!r} {problem}")
    root = data_root.resolve()
    if not root.is_dir():
        raise DatasetError(f"the worker's data root is not a folder (check its data_root setting); "
                           f"cannot load dataset {shown!r}")
    try:
        # Resolving follows every symlink, so a link inside the root that points outside it is caught here.
        path = (root / relative).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise DatasetError(f"dataset path {shown!r} cannot be resolved (a symlink loop?)") from None
    if not path.is_relative_to(root):
        raise DatasetError(f"dataset path {shown!r} must stay inside the data root; it links to outside it")
    if not path.exists():
        raise DatasetError(f"{relative!r} does not exist under the data root (dataset {shown!r})")
    if path.is_dir():
        _require_links_inside(root, root / relative, shown)
    return path


def _require_links_inside(root: Path, folder: Path, shown: str) -> None:
    """Refuse a folder dataset if anything below it (a class folder, an image) links to outside `root`.

    Only the folder itself is named by the request, but a reader such as Keras's follows every link
    beneath it. Links are followed here too, each real folder walked once, so a loop inside the root ends.
    """
    pending, walked = [folder], set()
    while pending:
        current = pending.pop()
        real = current.resolve()
        if real in walked:
            continue
        walked.add(real)
        try:
            entries = list(os.scandir(current))
        except OSError as error:
            raise DatasetError(f"dataset {shown!r}: cannot list {_inside(root, current)!r} ({error.strerror})") \
                from None
        for entry in entries:
            path = Path(entry.path)
            try:
                target = path.resolve()
            except (OSError, RuntimeError):  # a symlink loop
                raise DatasetError(f"dataset {shown!r}: {_inside(root, path)!r} cannot be resolved (a symlink "
                                   f"loop?)") from None
            if not target.is_relative_to(root):
                raise DatasetError(f"dataset path {shown!r} must stay inside the data root; {_inside(root, path)!r} "
                                   f"links to outside it")
            if entry.is_dir(follow_symlinks=True):
                pending.append(path)


def _inside(root: Path, path: Path) -> str:
    """`path` as the request can see it: relative to the data root, never absolute."""
    return path.relative_to(root).as_posix()


def load_npz(path: Path) -> Dataset:
    """An .npz file with arrays `x` (examples) and `y` (integer labels 0..k-1); shuffled like the built-ins.

    Features become float32 as they are (no scaling: the file's author chose its preprocessing).
    """
    if not path.is_file():
        raise DatasetError("an npz dataset must be a file")
    try:
        # No pickles: an object array in a file would be code run on the worker.
        with np.load(path, allow_pickle=False) as arrays:
            missing = [key for key in ("x", "y") if key not in arrays.files]
            if missing:
                raise DatasetError(f"an npz dataset needs arrays 'x' and 'y', but {', '.join(missing)} "
                                   f"is missing (found: {', '.join(arrays.files) or 'none'})")
            x, y = arrays["x"], arrays["y"]
    except DatasetError:
        raise
    except (OSError, ValueError) as error:
        raise DatasetError(f"not a readable .npz file without pickled objects ({error})") from None
    if len(x) == 0 or len(x) != len(y) or y.ndim != 1:
        raise DatasetError(f"an npz dataset needs as many labels as examples, at least one, and y one-dimensional; "
                           f"got x {x.shape} and y {y.shape}")
    if not np.issubdtype(x.dtype, np.number) or x.dtype.kind == "c":
        raise DatasetError(f"x must hold real numbers, but its dtype is {x.dtype}")
    if not (np.issubdtype(y.dtype, np.number) and np.all(np.mod(y, 1) == 0) and y.min() >= 0):
        raise DatasetError("y must hold class labels as whole numbers 0, 1, ..., num_classes - 1")
    y = y.astype("int64")
    return _shuffled(x.astype("float32"), y, num_classes=int(y.max()) + 1)


def load_image_folder(path: Path) -> Dataset:
    """A folder with one sub-folder of images per class, resized to IMAGE_SIZE, RGB, scaled to [0, 1].

    Class indices follow the sub-folders' sorted names. The images are decoded once, into memory, so
    a worker's later trials never read or decode the files again; the runner then feeds them through
    the same cached tf.data pipeline as every array dataset.
    """
    if not path.is_dir():
        raise DatasetError("an images dataset must be a folder with one sub-folder per class")
    import keras

    try:
        # Keras shuffles with a fixed seed here; the order is then fixed like the built-ins'.
        images = keras.utils.image_dataset_from_directory(
            path, labels="inferred", label_mode="int", color_mode="rgb", image_size=IMAGE_SIZE,
            batch_size=256, shuffle=True, seed=_SHUFFLE_SEED, verbose=False)
    except ValueError as error:
        raise DatasetError(f"cannot read the image folder ({error})") from None
    batches: list[tuple[Any, Any]] = [(np.asarray(x), np.asarray(y)) for x, y in images.as_numpy_iterator()]
    if not batches:
        raise DatasetError("the image folder holds no images (supported: .bmp, .gif, .jpeg, .jpg, .png)")
    x = np.concatenate([b[0] for b in batches]).astype("float32") / 255.0
    y = np.concatenate([b[1] for b in batches]).astype("int64")
    return Dataset(x=x, y=y, info=DatasetInfo(input_shape=tuple(x.shape[1:]), num_classes=len(images.class_names)))


class TrainingData:
    """A dataset ready to train on: its train and validation parts as cached tf.data pipelines.

    Each part yields single (features, label) examples and is cached in memory after its first full
    pass, so one worker's later trials read examples from memory. `batches` adds what differs per
    trial: the shuffle seed and the batch size. Each part's size (for the steps per epoch) and the
    training labels (for balanced class weights) come from the arrays, or from one counting pass.
    """

    def __init__(self, train: Any, validation: Any, info: DatasetInfo, train_labels: np.ndarray | None = None):
        self.train = train
        self.validation = validation
        self.info = info
        self._train_labels = train_labels
        self._validation_size: int | None = None

    @property
    def train_size(self) -> int:
        """The number of training examples."""
        cardinality = int(self.train.cardinality())
        # Negative means unknown (-2) or infinite (-1): then count, once.
        return cardinality if cardinality >= 0 else len(self.train_labels())

    @property
    def validation_size(self) -> int:
        """The number of validation examples."""
        if self._validation_size is None:
            self._validation_size = _count("validation", self.validation)
        return self._validation_size

    def train_labels(self) -> np.ndarray:
        """Every training label, in one flat integer array (read in one pass, which fills the cache)."""
        if self._train_labels is None:
            _require_finite("train", self.train)
            labels = [np.reshape(label, -1) for label in self.train.map(lambda x, y: y).as_numpy_iterator()]
            self._train_labels = np.concatenate(labels).astype("int64") if labels else np.zeros(0, "int64")
        return self._train_labels

    def batches(self, batch_size: int, seed: int | None) -> tuple[Any, Any]:
        """(train, validation) batched pipelines with prefetch; train reshuffled each epoch from `seed`."""
        import tensorflow as tf

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, but got {batch_size}")
        sizes = {"train": self.train_size, "validation": self.validation_size}
        empty = [part for part, size in sizes.items() if size == 0]
        if empty:
            raise DatasetError(f"the {empty[0]} part of the dataset holds no examples")
        # Keras needs the number of batches up front (so do the schedules), and without it warns that
        # the data "ran out" at the end of each first pass; the counts are exact.
        train, validation = (part if int(part.cardinality()) >= 0
                             else part.apply(tf.data.experimental.assert_cardinality(sizes[name]))
                             for name, part in (("train", self.train), ("validation", self.validation)))
        # A full-size buffer is a true shuffle, like Keras's own for arrays; it holds references to the
        # cached examples, not copies.
        train = train.shuffle(sizes["train"], seed=seed, reshuffle_each_iteration=True)
        return (train.batch(batch_size).prefetch(tf.data.AUTOTUNE),
                validation.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def _require_finite(part_name: str, part: Any) -> None:
    if int(part.cardinality()) == -1:  # tf.data.INFINITE_CARDINALITY
        raise DatasetError(f"the {part_name} part of a dataset must be finite, but it repeats forever")


def _count(part_name: str, part: Any) -> int:
    cardinality = int(part.cardinality())
    if cardinality >= 0:
        return cardinality
    _require_finite(part_name, part)
    # One full pass, which also fills the part's cache.
    return int(part.reduce(np.int64(0), lambda count, _: count + 1))


@dataclass
class _Loaded:
    dataset: Dataset | DataSplits
    prepared: dict[float | None, TrainingData] = field(default_factory=dict)
    """TrainingData by validation split (None for DataSplits, which bring their own)."""


_cache: dict[tuple[str, Path | None], _Loaded] = {}


def load_dataset(name: str, data_root: Path | None = None) -> Dataset | DataSplits:
    """The dataset `name`, loaded once per process: a worker's later trials reuse it.

    Registered names call their builder; `<format>:<path>` names load a file under `data_root`
    (default ./data). Files are read once per process: changes on disk show in a new worker process.
    """
    return _load(name, data_root).dataset


def training_data(name: str, data_root: Path | None = None, validation_split: float = 0.2) -> TrainingData:
    """The dataset `name` as cached train and validation pipelines, made once per process.

    A `Dataset` is split like Keras's own `validation_split`: the last fraction is validation. A
    `DataSplits` keeps its own split, and `validation_split` does not apply to it.
    """
    loaded = _load(name, data_root)
    key = None if isinstance(loaded.dataset, DataSplits) else validation_split
    if key not in loaded.prepared:
        loaded.prepared[key] = _prepare(name, loaded.dataset, validation_split)
    return loaded.prepared[key]


def split_arrays(dataset: Dataset, validation_split: float) -> tuple[tuple[np.ndarray, np.ndarray],
                                                                     tuple[np.ndarray, np.ndarray]]:
    """((x, y) train, (x, y) validation): the last `validation_split` of the examples is validation."""
    # The same cut as Keras's own `validation_split` (the last fraction, not shuffled), done here so
    # that the number of training examples, and with it the steps per epoch, is known exactly.
    split_at = int(math.floor(len(dataset.x) * (1.0 - validation_split)))
    if not 0 < split_at < len(dataset.x):
        raise ValueError(f"validation_split {validation_split} leaves no training or no validation examples "
                         f"out of {len(dataset.x)}")
    return (dataset.x[:split_at], dataset.y[:split_at]), (dataset.x[split_at:], dataset.y[split_at:])


def _load(name: str, data_root: Path | None) -> _Loaded:
    registry = _registry.datasets
    split = registry.split_file_name(name) if isinstance(registry, _registry.DatasetRegistry) else None
    if split is None:
        key: tuple[str, Path | None] = (name, None)
        if key not in _cache:
            _cache[key] = _Loaded(_checked(name, registry.get(name)()))
        return _cache[key]

    prefix, relative = split
    root = data_root if data_root is not None else DEFAULT_DATA_ROOT
    key = (name, root.resolve())
    if key not in _cache:
        path = resolve_data_path(root, relative, name)
        try:
            dataset = registry.get_format(prefix)(path)
        except DatasetError as error:
            raise DatasetError(f"dataset {name!r}: {error}") from None
        _cache[key] = _Loaded(_checked(name, dataset))
    return _cache[key]


def _checked(name: str, dataset: object) -> Dataset | DataSplits:
    if not isinstance(dataset, (Dataset, DataSplits)):
        raise TypeError(f"dataset builder {name!r} must return a Dataset or DataSplits, "
                        f"but returned {type(dataset).__name__}")
    return dataset


def _prepare(name: str, dataset: Dataset | DataSplits, validation_split: float) -> TrainingData:
    if isinstance(dataset, Dataset):
        (x_train, y_train), validation = split_arrays(dataset, validation_split)
        return TrainingData(_cached_pipeline((x_train, y_train)), _cached_pipeline(validation), dataset.info,
                            train_labels=y_train)
    parts = {}
    for part in ("train", "validation"):
        value = getattr(dataset, part)
        try:
            parts[part] = _cached_pipeline(value)
        except DatasetError as error:
            raise DatasetError(f"dataset {name!r}: the {part} part {error}") from None
    labels = np.asarray(dataset.train[1]).astype("int64") if isinstance(dataset.train, (tuple, list)) else None
    return TrainingData(parts["train"], parts["validation"], dataset.info, train_labels=labels)


def _cached_pipeline(part: Any) -> Any:
    """A tf.data.Dataset of single (features, label) examples, cached in memory after its first pass."""
    import tensorflow as tf

    if isinstance(part, tf.data.Dataset):
        spec = part.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise DatasetError(f"must yield (features, label) pairs, but its elements are {spec}")
        return part.cache()
    if isinstance(part, (tuple, list)) and len(part) == 2:
        x, y = np.asarray(part[0]), np.asarray(part[1])
        if len(x) != len(y) or y.ndim != 1:
            raise DatasetError(f"needs as many labels as examples and y one-dimensional; "
                               f"got x {x.shape} and y {y.shape}")
        return tf.data.Dataset.from_tensor_slices((x, y)).cache()
    raise DatasetError(f"must be a tf.data.Dataset of (features, label) pairs or an (x, y) pair of arrays, "
                       f"but is {type(part).__name__}")

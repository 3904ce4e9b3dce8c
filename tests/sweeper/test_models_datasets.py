"""Built-in datasets and models, and their lookup through the registries."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from sweeper import _registry
from sweeper.training import datasets
from sweeper.training.datasets import Dataset, DatasetInfo, load_dataset, load_digits
from sweeper.training.models import build_cnn, build_mlp

DIGITS = DatasetInfo(input_shape=(8, 8, 1), num_classes=10)


def test_digits_are_scaled_8x8_images_with_int_labels() -> None:
    digits = load_digits()

    assert digits.x.shape == (1797, 8, 8, 1)
    assert digits.x.dtype == np.float32
    assert digits.x.min() == 0.0 and digits.x.max() == 1.0
    assert digits.y.shape == (1797,)
    assert np.issubdtype(digits.y.dtype, np.integer)
    assert set(digits.y.tolist()) == set(range(10))
    assert digits.info == DIGITS


def test_digits_are_shuffled_the_same_way_every_time() -> None:
    first, second = load_digits(), load_digits()

    np.testing.assert_array_equal(first.x, second.x)
    np.testing.assert_array_equal(first.y, second.y)
    # scikit-learn's order is 0, 1, 2, ..., 9, 0, 1, ...: a shuffled copy does not start that way.
    assert first.y[:10].tolist() != list(range(10))


def test_load_dataset_loads_each_registered_dataset_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def tiny() -> Dataset:
        calls.append("tiny")
        return Dataset(x=np.zeros((4, 2), "float32"), y=np.zeros(4, "int64"), info=DatasetInfo((2,), 2))

    monkeypatch.setattr(_registry, "datasets", _registry.Registry("dataset", {"tiny": tiny}))
    monkeypatch.setattr(datasets, "_cache", {})

    first = load_dataset("tiny")
    second = load_dataset("tiny")

    assert first is second
    assert calls == ["tiny"]


def test_load_dataset_rejects_a_builder_that_returns_something_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "datasets", _registry.Registry("dataset", {"raw": lambda: (1, 2)}))
    monkeypatch.setattr(datasets, "_cache", {})

    with pytest.raises(TypeError, match="dataset builder 'raw' must return a Dataset or DataSplits, "
                                        "but returned tuple"):
        load_dataset("raw")


def test_registries_point_at_the_built_in_builders() -> None:
    assert _registry.models.get("mlp") is build_mlp
    assert _registry.models.get("cnn") is build_cnn
    assert _registry.datasets.get("digits") is load_digits


def _layers(model: keras.Model, kind: type) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if isinstance(layer, kind)]


def test_mlp_defaults_to_one_hidden_layer_of_64_relu_units() -> None:
    model = build_mlp({}, DIGITS)

    hidden, head = _layers(model, keras.layers.Dense)
    assert (hidden.units, hidden.activation.__name__) == (64, "relu")
    assert (head.units, head.activation.__name__) == (10, "softmax")
    assert _layers(model, keras.layers.Dropout) == []
    assert model.output_shape == (None, 10)


def test_mlp_has_depth_blocks_of_dense_and_dropout() -> None:
    model = build_mlp({"units": 16, "depth": 3, "dropout": 0.25, "activation": "tanh"}, DIGITS)

    dense = _layers(model, keras.layers.Dense)
    assert [(layer.units, layer.activation.__name__) for layer in dense[:-1]] == [(16, "tanh")] * 3
    assert [layer.rate for layer in _layers(model, keras.layers.Dropout)] == [0.25] * 3
    assert isinstance(model.layers[1], keras.layers.Flatten)


def test_mlp_rejects_a_fractional_unit_count() -> None:
    with pytest.raises(ValueError, match="hparam units must be a positive whole number, but got 12.5"):
        build_mlp({"units": 12.5}, DIGITS)


def test_mlp_accepts_whole_numbers_sent_as_floats() -> None:
    assert _layers(build_mlp({"units": 32.0}, DIGITS), keras.layers.Dense)[0].units == 32


def test_cnn_stacks_blocks_with_same_padding_so_8x8_images_fit() -> None:
    model = build_cnn({"filters": 8, "kernel_size": 3, "blocks": 3, "dropout": 0.1, "dense_units": 24}, DIGITS)

    convolutions = _layers(model, keras.layers.Conv2D)
    assert [layer.filters for layer in convolutions] == [8, 16, 32]
    assert {layer.padding for layer in convolutions} == {"same"}
    assert _layers(model, keras.layers.Dense)[0].units == 24
    assert model.predict(np.zeros((2, 8, 8, 1), "float32"), verbose=0).shape == (2, 10)


def test_cnn_defaults() -> None:
    model = build_cnn({}, DIGITS)

    (convolution,) = _layers(model, keras.layers.Conv2D)
    assert (convolution.filters, convolution.kernel_size) == (16, (3, 3))
    assert _layers(model, keras.layers.Dense)[0].units == 32


def test_cnn_rejects_inputs_that_are_not_images() -> None:
    with pytest.raises(ValueError, match=r"needs images shaped \(height, width, channels\)"):
        build_cnn({}, DatasetInfo(input_shape=(64,), num_classes=10))


def test_cnn_batch_norm_puts_a_normalization_after_each_convolution() -> None:
    model = build_cnn({"filters": 4, "blocks": 2, "batch_norm": True}, DIGITS)

    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds[1:9] == ["Conv2D", "BatchNormalization", "Activation", "MaxPooling2D"] * 2
    assert [layer.use_bias for layer in _layers(model, keras.layers.Conv2D)] == [False, False]
    assert model.predict(np.zeros((2, 8, 8, 1), "float32"), verbose=0).shape == (2, 10)


@pytest.mark.parametrize("hparams", [{}, {"batch_norm": False}])
def test_cnn_has_no_batch_norm_unless_asked(hparams: dict[str, object]) -> None:
    model = build_cnn({"blocks": 2, **hparams}, DIGITS)

    assert _layers(model, keras.layers.BatchNormalization) == []
    assert [layer.activation.__name__ for layer in _layers(model, keras.layers.Conv2D)] == ["relu", "relu"]


def test_cnn_batch_norm_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="hparam batch_norm must be true or false, but got 'yes'"):
        build_cnn({"batch_norm": "yes"}, DIGITS)


@pytest.mark.parametrize("build", [build_mlp, build_cnn])
def test_built_in_models_keep_a_float32_softmax_under_mixed_precision(build: object) -> None:
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = build({}, DIGITS)  # type: ignore[operator]
    finally:
        keras.mixed_precision.set_dtype_policy("float32")

    *hidden, head = _layers(model, keras.layers.Dense)
    assert {layer.compute_dtype for layer in hidden} == {"float16"}
    assert head.compute_dtype == "float32"
    assert model.output.dtype == "float32"

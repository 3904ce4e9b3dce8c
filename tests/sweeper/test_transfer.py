"""The transfer model: keras.applications backbones on small images, frozen layers, local weights only."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from sweeper import SpecError, _registry, load_spec, parse_spec
from sweeper._domains import Fixed
from sweeper._spec import Objective, TrainSettings
from sweeper._transfer_params import check_transfer_hparams
from sweeper.messages import Assignment
from sweeper.training.datasets import Dataset, DatasetInfo, load_digits, using_data_root
from sweeper.training.runner import run_trial
from sweeper.training.transfer import BACKBONE_LAYER, TransferError, backbone_layers, build_transfer

pytestmark = pytest.mark.training

DIGITS = DatasetInfo(input_shape=(8, 8, 1), num_classes=10)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _backbone(model: keras.Model) -> keras.Model:
    return model.get_layer(BACKBONE_LAYER)


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "efficientnet_b0"])
def test_each_backbone_builds_a_softmax_classifier_on_digits_shaped_images(backbone: str) -> None:
    model = build_transfer({"backbone": backbone, "head_units": 16, "dropout": 0.2}, DIGITS)

    assert model.input_shape == (None, 8, 8, 1)
    assert model.output_shape == (None, 10)
    # The 8x8 gray digits reach the backbone as the smallest RGB images it accepts.
    assert _backbone(model).input_shape == (None, 32, 32, 3)
    assert [layer.name for layer in model.layers[-4:]] == ["pool", "head_dense", "head_dropout", "classifier"]
    assert model.get_layer("head_dense").units == 16
    assert model.get_layer("classifier").dtype_policy.name == "float32"
    probabilities = model.predict(np.random.default_rng(0).random((3, 8, 8, 1), dtype="float32"), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_no_head_units_means_no_hidden_dense_layer_and_image_size_sets_the_backbones_input() -> None:
    model = build_transfer({"image_size": 40}, DatasetInfo(input_shape=(8, 8, 3), num_classes=4))

    assert "head_dense" not in [layer.name for layer in model.layers]
    assert "gray_to_rgb" not in [layer.name for layer in model.layers]  # already RGB
    assert _backbone(model).input_shape == (None, 40, 40, 3)
    assert model.output_shape == (None, 4)


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "efficientnet_b0"])
def test_bn_momentum_sets_every_backbone_batch_normalization(backbone: str) -> None:
    default = _backbone(build_transfer({"backbone": backbone}, DIGITS))
    chosen = _backbone(build_transfer({"backbone": backbone, "bn_momentum": 0.5}, DIGITS))

    def momenta(model: keras.Model) -> set[float]:
        return {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}

    assert momenta(default) == {0.9}
    assert momenta(chosen) == {0.5}


def test_pixels_reach_the_backbone_scaled_to_0_255() -> None:
    model = build_transfer({}, DIGITS)
    to_backbone = keras.Model(model.input, model.get_layer("to_0_255").output)

    scaled = to_backbone.predict(np.ones((1, 8, 8, 1), "float32"), verbose=0)

    assert scaled.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(scaled, 255.0, rtol=1e-5)


@pytest.mark.parametrize("frozen", [0, 1, 25])
def test_frozen_layers_freezes_exactly_that_many_backbone_layers_from_the_input_side(frozen: int) -> None:
    layers = backbone_layers(_backbone(build_transfer({"frozen_layers": frozen}, DIGITS)))

    assert [layer.trainable for layer in layers] == [False] * frozen + [True] * (len(layers) - frozen)


def test_frozen_layers_beyond_the_backbone_names_its_layer_count() -> None:
    count = len(backbone_layers(_backbone(build_transfer({}, DIGITS))))

    build_transfer({"frozen_layers": count}, DIGITS)  # every layer: allowed
    with pytest.raises(TransferError, match=f"frozen_layers must be at most {count}, the number of layers of the "
                                            f"mobilenet_v3_small backbone, but got {count + 1}"):
        build_transfer({"frozen_layers": count + 1}, DIGITS)


@pytest.mark.parametrize("hparams, message", [
    ({"backbone": "resnet50"}, "unknown backbone 'resnet50'; known backbones: mobilenet_v3_small, efficientnet_b0"),
    ({"frozen_layers": -1}, "frozen_layers must be an integer >= 0, but got -1"),
    ({"dropout": 1.0}, "dropout must be in [0, 1), but got 1.0"),
    ({"image_size": 16}, "image_size must be an integer in [32, 1024], but got 16"),
    ({"weights": 3}, "weights must be 'none' or a file path under the data root, but got 3"),
])
def test_bad_hparams_are_refused_naming_the_rule(hparams: dict[str, Any], message: str) -> None:
    with pytest.raises(TransferError, match=f"hparam .*{_escaped(message)}"):
        build_transfer(hparams, DIGITS)


@pytest.mark.parametrize("shape", [(64,), (8, 8, 2)])
def test_non_image_datasets_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(TransferError, match=r"needs images shaped \(height, width\).*input shape is"):
        build_transfer({}, DatasetInfo(input_shape=shape, num_classes=3))


def test_images_without_a_channel_axis_are_treated_as_gray() -> None:
    model = build_transfer({}, DatasetInfo(input_shape=(8, 8), num_classes=2))
    assert _backbone(model).input_shape == (None, 32, 32, 3)


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "efficientnet_b0"])
def test_backbone_weights_saved_from_one_model_load_into_another(tmp_path: Path, backbone: str) -> None:
    source = _backbone(build_transfer({"backbone": backbone}, DIGITS))
    (tmp_path / "weights").mkdir()
    source.save_weights(tmp_path / "weights" / f"{backbone}.weights.h5")

    with using_data_root(tmp_path):
        loaded = _backbone(build_transfer({"backbone": backbone, "weights": f"weights/{backbone}.weights.h5",
                                           "image_size": 48}, DIGITS))
    fresh = _backbone(build_transfer({"backbone": backbone}, DIGITS))

    assert len(loaded.weights) == len(source.weights) > 0
    for variable, saved, restored in zip(loaded.weights, source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(restored, saved, err_msg=variable.path)
    # Random initialisation differs, so the equality above is the file's doing.
    assert any(not np.array_equal(a, b) for a, b in zip(source.get_weights(), fresh.get_weights()))


def test_frozen_layers_apply_to_loaded_weights_too(tmp_path: Path) -> None:
    _backbone(build_transfer({}, DIGITS)).save_weights(tmp_path / "b.weights.h5")
    with using_data_root(tmp_path):
        layers = backbone_layers(_backbone(build_transfer({"weights": "b.weights.h5", "frozen_layers": 5}, DIGITS)))
    assert sum(not layer.trainable for layer in layers) == 5


def test_a_missing_weights_file_says_where_and_that_nothing_is_downloaded(tmp_path: Path) -> None:
    with using_data_root(tmp_path), pytest.raises(TransferError) as caught:
        build_transfer({"weights": "weights/mobilenet.weights.h5"}, DIGITS)

    message = str(caught.value)
    assert "'weights/mobilenet.weights.h5' is missing under the worker's data root" in message
    assert "sweeper never downloads weights: use weights: none, or put the file there" in message
    assert str(tmp_path) not in message


@pytest.mark.parametrize("path, rule", [
    ("../x.weights.h5", "must stay inside the data root; '..' parts are not allowed"),
    ("/etc/x.weights.h5", "must be relative to the data root, not absolute"),
])
def test_weights_outside_the_data_root_are_refused(tmp_path: Path, path: str, rule: str) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "x.weights.h5").write_bytes(b"")  # exists, right outside the root
    with using_data_root(tmp_path / "root"), pytest.raises(TransferError, match=_escaped(rule)):
        build_transfer({"weights": path}, DIGITS)


def test_weights_linked_from_outside_the_data_root_are_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    _backbone(build_transfer({}, DIGITS)).save_weights(tmp_path / "outside.weights.h5")
    (tmp_path / "root" / "b.weights.h5").symlink_to(tmp_path / "outside.weights.h5")

    with using_data_root(tmp_path / "root"), pytest.raises(TransferError, match="must stay inside the data root"):
        build_transfer({"weights": "b.weights.h5"}, DIGITS)


def test_weights_of_another_backbone_fail_clearly_without_showing_the_workers_paths(tmp_path: Path) -> None:
    _backbone(build_transfer({"backbone": "efficientnet_b0"}, DIGITS)).save_weights(tmp_path / "e.weights.h5")

    with using_data_root(tmp_path), pytest.raises(TransferError) as caught:
        build_transfer({"backbone": "mobilenet_v3_small", "weights": "e.weights.h5"}, DIGITS)

    message = str(caught.value)
    assert "'e.weights.h5' does not load into the mobilenet_v3_small backbone" in message
    assert str(tmp_path) not in message
    assert len(message) < 1000  # Keras's message quotes whole tensors; they are cut


def test_the_registry_names_the_builder() -> None:
    assert _registry.models.get("transfer") is build_transfer


def test_a_short_training_run_through_the_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digits = load_digits()
    tiny = Dataset(x=digits.x[:96], y=digits.y[:96], info=digits.info)
    monkeypatch.setattr(_registry, "datasets", _registry.Registry("dataset", {"transfer_tiny_digits": lambda: tiny}))
    epochs: list[int] = []
    assignment = Assignment(
        trial_id=1, sweep_id=1, number=1, model="transfer", dataset="transfer_tiny_digits",
        hparams={"frozen_layers": 20, "head_units": 8, "dropout": 0.1, "learning_rate": 0.01, "batch_size": 32},
        objective=Objective(metric="val_accuracy"), train=TrainSettings(epochs=1, validation_split=0.25),
        logdir=str(tmp_path / "1"), lease_expires_at=datetime.now(timezone.utc) + timedelta(minutes=5),
        lease_token=1)

    result = run_trial(assignment, lambda epoch, metrics: epochs.append(epoch) or "continue")

    assert (result.epochs_run, result.stopped, epochs) == (1, False, [0])
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(result.metrics)
    assert all(np.isfinite(value) for value in result.metrics.values())


# -- spec time: no TensorFlow ---------------------------------------------------------------------

def _raw(model: str = "transfer", **hparams: Any) -> dict[str, Any]:
    return {"name": "t", "model": model, "dataset": "digits", "objective": {"metric": "val_accuracy"},
            "hparams": hparams, "search": {"strategy": "random", "max_trials": 2}}


def _space(**hparams: Any) -> dict[str, Any]:
    return parse_spec(_raw(**hparams)).search_space()


def _problems(model: str = "transfer", **hparams: Any) -> dict[tuple[Any, ...], str]:
    """The spec's problems by field path, as submitting it reports them; {} when it is valid."""
    try:
        parse_spec(_raw(model, **hparams))
    except SpecError as error:
        return dict(error.problems)
    return {}


def test_spec_time_checks_accept_a_good_transfer_space() -> None:
    space = _space(backbone={"type": "discrete", "values": ["mobilenet_v3_small", "efficientnet_b0"]},
                   weights={"type": "discrete", "values": ["none", "weights/b0.weights.h5"]},
                   frozen_layers={"type": "int_interval", "min": 0, "max": 100}, head_units=0,
                   dropout={"type": "real_interval", "min": 0.0, "max": 0.5}, image_size=32, batch_size=32)
    assert check_transfer_hparams(space) == []
    assert _registry.models.check_hparams("transfer", space) == []


def test_spec_time_checks_name_each_broken_rule_with_its_field() -> None:
    problems = _problems(backbone={"type": "discrete", "values": ["mobilenet_v3_small", "vgg16"]},
                         weights="../weights/b0.weights.h5",
                         frozen_layers={"type": "real_interval", "min": 0.0, "max": 10.0},
                         head_units=-4, dropout={"type": "real_interval", "min": 0.0, "max": 1.0}, image_size=8,
                         input_scale=0, bn_momentum=1.0)

    assert problems == {
        ("hparams", "backbone"): "unknown backbone 'vgg16'; known backbones: mobilenet_v3_small, efficientnet_b0",
        ("hparams", "weights"): "weights file '../weights/b0.weights.h5' must stay inside the data root; '..' parts "
                                "are not allowed",
        ("hparams", "frozen_layers"): "frozen_layers must be an integer >= 0: search it with an int_interval, "
                                      "not a real_interval",
        ("hparams", "head_units"): "head_units must be an integer >= 0, but got -4",
        ("hparams", "dropout"): "dropout must be in [0, 1), but the interval's max is 1.0",
        ("hparams", "image_size"): "image_size must be an integer in [32, 1024], but got 8",
        ("hparams", "input_scale"): "input_scale must be > 0, but got 0",
        ("hparams", "bn_momentum"): "bn_momentum must be in [0, 1), but got 1.0",
    }


def test_spec_time_checks_refuse_absolute_weights_and_searched_backbones() -> None:
    problems = _problems(weights="/etc/passwd", backbone={"type": "real_interval", "min": 0, "max": 1})
    assert problems[("hparams", "weights")] == "weights file '/etc/passwd' must be relative to the data root, not absolute"
    assert problems[("hparams", "backbone")] == "backbone must be a fixed value or a discrete list, not a real_interval"


def test_other_models_have_no_transfer_checks() -> None:
    # A spec naming `backbone` for the mlp is refused as an hparam the mlp does not read (test_unknown_hparams);
    # the transfer model's own checks are not what refuses it.
    assert _registry.models.check_hparams("transfer", {"backbone": Fixed(value="vgg16")}) != []
    assert _registry.models.check_hparams("mlp", {"backbone": Fixed(value="vgg16")}) == []


def test_spec_time_checks_load_no_tensorflow() -> None:
    code = ("import sys, sweeper\n"
            "from sweeper import _registry\n"
            "from sweeper._domains import Fixed\n"
            "assert _registry.models.check_hparams('transfer', {'weights': Fixed(value='../x')})\n"
            "print(sorted({'tensorflow', 'keras'} & set(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(EXAMPLES.parent)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_transfer_example_is_a_valid_small_sweep() -> None:
    spec = load_spec(EXAMPLES / "transfer.yaml")

    assert (spec.model, spec.dataset) == ("transfer", "digits")
    assert _registry.models.check_hparams("transfer", spec.search_space()) == []
    assert spec.search_space()["weights"].value == "none"
    assert {"frozen_layers", "head_units"} <= {name for name, domain in spec.search_space().items()
                                                if domain.type == "discrete"}


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


def test_a_file_keras_loads_only_partly_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    (tmp_path / "b.weights.h5").write_bytes(b"")

    def partial_load(self: keras.Model, filepath: str, **kwargs: Any) -> None:
        # What Keras does for parts of a file that match nothing: a warning, and the layers stay random.
        warnings.warn("Skipping nested container at 'container_7': no matching group found in the saved file.")

    monkeypatch.setattr(keras.Model, "load_weights", partial_load)
    with using_data_root(tmp_path), pytest.raises(TransferError, match="does not load into the mobilenet_v3_small "
                                                                        "backbone .*: parts were skipped: Skipping"):
        build_transfer({"weights": "b.weights.h5"}, DIGITS)

"""The `transfer` model: a keras.applications backbone under a new softmax head, registered as "transfer".

Hparams (rules in `sweeper._transfer_params`, also checked when a sweep is submitted):

- `backbone`: "mobilenet_v3_small" (default) or "efficientnet_b0".
- `weights`: "none" (default; random initialisation) or a backbone weights file under the worker's data
  root, e.g. "weights/mobilenet_v3_small.weights.h5". Nothing is ever downloaded.
- `frozen_layers`: how many backbone layers, from the input side, are not trained (default 0).
- `head_units`: a Dense(head_units, relu) layer before the classifier when > 0 (default 0).
- `dropout`: the dropout rate before the classifier (default 0).
- `image_size`: the side images are resized to (default: the dataset's own size, at least 32).
- `input_scale`: what pixels are multiplied by to reach the 0..255 range the backbones' built-in
  preprocessing expects (default 255, for pixels in [0, 1] like every built-in image dataset).
- `bn_momentum`: the momentum of the backbone's BatchNormalization statistics (default 0.9, where Keras's
  MobileNetV3 has 0.999: too slow for the statistics of a new dataset to settle within a short trial).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras

from sweeper._errors import SweeperError
from sweeper._transfer_params import (DEFAULT_BACKBONE, MIN_IMAGE_SIZE, NO_WEIGHTS, PARAMS, backbone_problem,
                                      weights_problem)
from sweeper.training.datasets import DatasetError, DatasetInfo, current_data_root, resolve_data_path

BACKBONE_LAYER = "backbone"
"""The backbone's name as a layer of the built model: `model.get_layer(BACKBONE_LAYER)`."""


class TransferError(SweeperError, ValueError):
    """The transfer model cannot be built from these hparams and this dataset."""


def _mobilenet_v3_small(shape: tuple[int, int, int]) -> keras.Model:
    # Its built-in preprocessing (a Rescaling layer) maps 0..255 to [-1, 1].
    return keras.applications.MobileNetV3Small(input_shape=shape, include_top=False, weights=None,
                                               include_preprocessing=True, name=BACKBONE_LAYER)


def _efficientnet_b0(shape: tuple[int, int, int]) -> keras.Model:
    # Its built-in preprocessing rescales 0..255 to [0, 1] and normalizes with the weights' statistics.
    return keras.applications.EfficientNetB0(input_shape=shape, include_top=False, weights=None,
                                             name=BACKBONE_LAYER)


BACKBONE_BUILDERS: dict[str, Callable[[tuple[int, int, int]], keras.Model]] = {
    "mobilenet_v3_small": _mobilenet_v3_small,
    "efficientnet_b0": _efficientnet_b0,
}


def build_transfer(hparams: Mapping[str, Any], info: DatasetInfo) -> keras.Model:
    """Images -> resize, gray to RGB, rescale -> backbone -> pooling, [Dense], Dropout, softmax."""
    backbone_name = hparams.get("backbone", DEFAULT_BACKBONE)
    problem = backbone_problem(backbone_name)
    if problem is not None:
        raise TransferError(f"hparam backbone: {problem}")
    frozen_layers = int(_param(hparams, "frozen_layers"))
    head_units = int(_param(hparams, "head_units"))
    dropout = float(_param(hparams, "dropout"))
    input_scale = float(_param(hparams, "input_scale"))
    bn_momentum = float(_param(hparams, "bn_momentum"))
    height, width, channels = _image_shape(info, backbone_name)
    if "image_size" in hparams:
        size = int(_param(hparams, "image_size"))
        target = (size, size)
    else:
        target = (max(MIN_IMAGE_SIZE, height), max(MIN_IMAGE_SIZE, width))
    # Resolved before anything is built: a missing file fails the trial at once.
    weights_file = _weights_file(hparams.get("weights", NO_WEIGHTS))

    inputs = keras.Input(shape=info.input_shape)
    x = inputs
    if len(info.input_shape) == 2:
        x = keras.layers.Reshape((height, width, 1), name="add_channel")(x)
    if (height, width) != target:
        x = keras.layers.Resizing(*target, name="resize")(x)
    if channels == 1:
        # The backbones' first convolution expects RGB; a gray image is the same value in each channel.
        x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    x = keras.layers.Rescaling(input_scale, name="to_0_255")(x)

    backbone = BACKBONE_BUILDERS[backbone_name]((*target, 3))
    if weights_file is not None:
        _load_backbone_weights(backbone, backbone_name, *weights_file)
    freeze(backbone, frozen_layers, backbone_name)
    for layer in backbone_layers(backbone):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum  # read when training steps are traced, so setting it now counts
    x = backbone(x)

    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if head_units > 0:
        x = keras.layers.Dense(head_units, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 even under mixed precision, so the softmax and the loss stay numerically stable.
    outputs = keras.layers.Dense(info.num_classes, activation="softmax", dtype="float32", name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"transfer_{backbone_name}")


def backbone_layers(backbone: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers in order from the input side, without its InputLayer (which has no weights)."""
    return [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]


def freeze(backbone: keras.Model, count: int, backbone_name: str) -> None:
    """Make the first `count` backbone layers untrainable (their BatchNormalization then runs in inference mode)."""
    layers = backbone_layers(backbone)
    if count > len(layers):
        raise TransferError(f"hparam frozen_layers must be at most {len(layers)}, the number of layers of the "
                            f"{backbone_name} backbone, but got {count}")
    for layer in layers[:count]:
        layer.trainable = False


def _param(hparams: Mapping[str, Any], name: str) -> float:
    param = PARAMS[name]
    value = hparams.get(name, param.default)
    # Values arrive through JSON, so a whole number may come as a float (64.0); 64.5 is a mistake.
    if param.kind == "int" and isinstance(value, float) and value.is_integer():
        value = int(value)
    problem = param.check(value)
    if problem is not None:
        raise TransferError(f"hparam {problem}")
    return value


def _image_shape(info: DatasetInfo, backbone_name: str) -> tuple[int, int, int]:
    shape = tuple(info.input_shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise TransferError(f"the transfer model ({backbone_name}) needs images shaped (height, width) or "
                            f"(height, width, 1 or 3 channels), but the dataset's input shape is {info.input_shape}; "
                            f"for tabular data use the mlp model")
    return shape  # type: ignore[return-value]


def _weights_file(value: Any) -> tuple[Path, str] | None:
    """(resolved path, the name the spec gave) of the weights file, or None for random initialisation."""
    problem = weights_problem(value)
    if problem is not None:
        raise TransferError(f"hparam weights: {problem}")
    if value == NO_WEIGHTS:
        return None
    root = current_data_root()
    # Checked before resolving, for a message that says what to do; resolving then refuses symlinks out.
    if not (root / value).exists():
        raise TransferError(f"hparam weights: the file {value!r} is missing under the worker's data root; sweeper "
                            f"never downloads weights: use weights: none, or put the file there")
    try:
        path = resolve_data_path(root, value, f"weights {value}")
    except DatasetError as error:
        raise TransferError(f"hparam weights: {error}") from None
    if not path.is_file():
        raise TransferError(f"hparam weights: {value!r} under the data root is not a file")
    return path, value


def _load_backbone_weights(backbone: keras.Model, backbone_name: str, path: Path, shown: str) -> None:
    # Keras only warns when it skips parts of a file that do not match; a backbone left partly random
    # would quietly spoil the sweep's comparison, so a skip is an error here.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            backbone.load_weights(str(path))
            failure = None
        except (ValueError, OSError, KeyError) as error:
            failure = str(error)
    skipped = [str(warning.message) for warning in caught if _PARTIAL_LOAD.search(str(warning.message))]
    for warning in caught:
        if str(warning.message) not in skipped:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if failure is None and not skipped:
        return
    # Keras names the absolute path (the message reaches whoever submitted the sweep, so show theirs), and
    # quotes whole tensors after "Target variable:".
    reason = (failure or f"parts were skipped: {skipped[0]}").replace(str(path), shown)
    reason = reason.split(" Target variable:")[0]
    reason = reason if len(reason) <= _MAX_REASON else reason[:_MAX_REASON] + " [...]"
    raise TransferError(f"hparam weights: {shown!r} does not load into the {backbone_name} backbone (a Keras "
                        f".weights.h5 or .h5 file saved from that backbone with include_top=False is expected): "
                        f"{reason}")


_PARTIAL_LOAD = re.compile(r"Skipping|could not be loaded|freshly-initialized", re.IGNORECASE)
_MAX_REASON = 600

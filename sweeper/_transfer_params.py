"""The `transfer` model's hparams and their rules, checkable without TensorFlow.

The server and `sweeper submit` check a transfer sweep's space with `check_transfer_hparams` (the model
registry runs it for specs naming model "transfer"); the builder in `sweeper.training.transfer` obeys
the same table when a trial builds, so what passes at submit time is what a worker accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sweeper._domains import Discrete, Fixed, IntInterval, RealInterval
from sweeper._registry import Problem, data_path_problem
from sweeper._schedule_params import ScheduleParam

BACKBONES = ("mobilenet_v3_small", "efficientnet_b0")
"""Values of hparam `backbone`: keras.applications models, built without downloading anything."""
DEFAULT_BACKBONE = "mobilenet_v3_small"
NO_WEIGHTS = "none"
"""hparam `weights`: random initialisation; anything else is a file under the worker's data root."""
MIN_IMAGE_SIZE = 32
"""The smallest side keras.applications backbones accept."""

# ScheduleParam is a plain "name, kind, range" rule; the schedules were its first users.
PARAMS: dict[str, ScheduleParam] = {param.name: param for param in [
    ScheduleParam("frozen_layers", "int", low=0, default=0),
    ScheduleParam("head_units", "int", low=0, default=0),
    ScheduleParam("dropout", "float", low=0.0, high=1.0, high_open=True, default=0.0),
    # An upper bound so that a typo (22400) fails at submit time, not as an out-of-memory on a worker.
    ScheduleParam("image_size", "int", low=MIN_IMAGE_SIZE, high=1024),
    ScheduleParam("input_scale", "float", low=0.0, low_open=True, default=255.0),
    # Keras's MobileNetV3 keeps its BatchNormalization statistics with momentum 0.999: they need thousands
    # of steps to settle, so a short trial would validate (in inference mode) on barely-moved statistics.
    ScheduleParam("bn_momentum", "float", low=0.0, high=1.0, high_open=True, default=0.9),
]}
"""Numeric hparams of the transfer model; the upper bound of frozen_layers depends on the backbone and
is checked when the model is built."""


def backbone_problem(value: Any) -> str | None:
    """The rule a `backbone` value breaks, or None."""
    if isinstance(value, str) and value in BACKBONES:
        return None
    return f"unknown backbone {value!r}; known backbones: {', '.join(BACKBONES)}"


def weights_problem(value: Any) -> str | None:
    """The rule a `weights` value breaks, or None: 'none', or a path under the data root (text only)."""
    if not isinstance(value, str):
        return f"weights must be {NO_WEIGHTS!r} or a file path under the data root, but got {value!r}"
    if value == NO_WEIGHTS:
        return None
    problem = data_path_problem(value)
    return None if problem is None else f"weights file {value!r} {problem}"


def check_transfer_hparams(space: Mapping[str, Any]) -> list[Problem]:
    """Problems with the transfer model's hparams in a search space (hparam name -> domain).

    A fixed value and every discrete value must be allowed; an interval must lie inside the range.
    Hparams the transfer model does not read are not looked at.
    """
    problems: list[Problem] = []
    for name, domain in space.items():
        path = ("hparams", name)
        if name in ("backbone", "weights"):
            rule = backbone_problem if name == "backbone" else weights_problem
            if not isinstance(domain, (Fixed, Discrete)):
                problems.append((path, f"{name} must be a fixed value or a discrete list, not a "
                                       f"{getattr(domain, 'type', type(domain).__name__)}"))
                continue
            problems += [(path, problem) for problem in map(rule, _values(domain)) if problem is not None]
        elif name in PARAMS:
            problems += [(path, problem) for problem in _check_param(PARAMS[name], domain)]
    return problems


def _values(domain: Fixed | Discrete) -> list[Any]:
    return [domain.value] if isinstance(domain, Fixed) else list(domain.values)


def _check_param(param: ScheduleParam, domain: Any) -> list[str]:
    if isinstance(domain, (Fixed, Discrete)):
        return [rule for rule in map(param.check, _values(domain)) if rule is not None]
    if param.kind == "int" and isinstance(domain, RealInterval):
        return [f"{param.name} must be {param.range}: search it with an int_interval, not a real_interval"]
    if not isinstance(domain, (RealInterval, IntInterval)):
        return []
    return [f"{param.name} must be {param.range}, but the interval's {end} is {bound}"
            for end, bound in (("min", domain.min), ("max", domain.max)) if not param.allows(bound)]

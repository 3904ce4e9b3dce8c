"""Learning-rate schedules and optimizers, chosen by hparams and built from Keras's own classes.

Schedules count optimizer steps. `build_learning_rate` turns epoch-based hparams into step counts
with the trial's steps per epoch, so "decay 0.9 per epoch" means the same whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras
from keras.optimizers import schedules

LearningRate = float | schedules.LearningRateSchedule

DEFAULT_LEARNING_RATE = 1e-3


def build_learning_rate(hparams: Mapping[str, Any], epochs: int, steps_per_epoch: int) -> LearningRate:
    """The learning rate that hparam `lr_schedule` names (default "constant"), from base `learning_rate`.

    - constant: `learning_rate` throughout.
    - step: multiplied by `lr_decay_factor` (default 0.1) every `lr_step_epochs` epochs
      (default max(1, epochs // 3)), from the first step of that epoch on.
    - exponential: multiplied by `lr_decay_rate` (default 0.9) per epoch, decaying smoothly per step.
    - cosine: cosine decay over the whole run, from `learning_rate` down to
      `lr_min_factor` (default 0.0) times it.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"epochs and steps_per_epoch must be >= 1, but got ({epochs=}, {steps_per_epoch=})")
    name = str(hparams.get("lr_schedule", "constant"))
    try:
        builder = _SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown lr_schedule {name!r}; known schedules: {', '.join(_SCHEDULES)}") from None
    base = float(hparams.get("learning_rate", DEFAULT_LEARNING_RATE))
    if not base > 0:
        raise ValueError(f"learning_rate must be > 0, but got {base}")
    return builder(hparams, base, epochs, steps_per_epoch)


def _constant(hparams: Mapping[str, Any], base: float, epochs: int, steps_per_epoch: int) -> LearningRate:
    return base


def _step(hparams: Mapping[str, Any], base: float, epochs: int, steps_per_epoch: int) -> LearningRate:
    factor = float(hparams.get("lr_decay_factor", 0.1))
    every = int(hparams.get("lr_step_epochs", max(1, epochs // 3)))
    if every < 1:
        raise ValueError(f"lr_step_epochs must be >= 1, but got {every}")
    # PiecewiseConstantDecay keeps values[i] while step <= boundaries[i]. Optimizer step s (counted
    # from 0) uses the rate at s, so boundary k*every*steps_per_epoch - 1 makes the first step of
    # epoch k*every the first one at the new rate. One boundary at least: Keras needs one, and one
    # past the end of training simply never takes effect.
    drops = range(1, max(1, epochs // every) + 1)
    boundaries = [k * every * steps_per_epoch - 1 for k in drops]
    values = [base * factor**k for k in range(len(boundaries) + 1)]
    return schedules.PiecewiseConstantDecay(boundaries, values)


def _exponential(hparams: Mapping[str, Any], base: float, epochs: int, steps_per_epoch: int) -> LearningRate:
    rate = float(hparams.get("lr_decay_rate", 0.9))
    return schedules.ExponentialDecay(base, decay_steps=steps_per_epoch, decay_rate=rate)


def _cosine(hparams: Mapping[str, Any], base: float, epochs: int, steps_per_epoch: int) -> LearningRate:
    alpha = float(hparams.get("lr_min_factor", 0.0))
    if not 0 <= alpha <= 1:
        raise ValueError(f"lr_min_factor must be in [0, 1], but got {alpha}")
    return schedules.CosineDecay(base, decay_steps=epochs * steps_per_epoch, alpha=alpha)


_SCHEDULES: dict[str, Callable[[Mapping[str, Any], float, int, int], LearningRate]] = {
    "constant": _constant,
    "step": _step,
    "exponential": _exponential,
    "cosine": _cosine,
}

_OPTIMIZERS: dict[str, type[keras.optimizers.Optimizer]] = {
    "adam": keras.optimizers.Adam,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
    "adamw": keras.optimizers.AdamW,
    "nadam": keras.optimizers.Nadam,
}

# Optimizers that take a `momentum` argument; for the others a swept momentum is simply unused.
_WITH_MOMENTUM = frozenset({"sgd", "rmsprop"})


def build_optimizer(hparams: Mapping[str, Any], learning_rate: LearningRate) -> keras.optimizers.Optimizer:
    """The Keras optimizer that hparam `optimizer` names (default "adam").

    `momentum` goes to sgd and rmsprop when given; `weight_decay` to any optimizer when given
    (adamw keeps Keras's default otherwise).
    """
    name = str(hparams.get("optimizer", "adam"))
    try:
        optimizer_class = _OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; allowed optimizers: {', '.join(_OPTIMIZERS)}") from None
    kwargs: dict[str, Any] = {}
    if "momentum" in hparams and name in _WITH_MOMENTUM:
        kwargs["momentum"] = float(hparams["momentum"])
    if "weight_decay" in hparams:
        kwargs["weight_decay"] = float(hparams["weight_decay"])
    return optimizer_class(learning_rate=learning_rate, **kwargs)


def known_schedules() -> list[str]:
    return list(_SCHEDULES)


def known_optimizers() -> list[str]:
    return list(_OPTIMIZERS)

"""Learning-rate schedules and optimizers, chosen by hparams and built from Keras's own classes.

Schedules count optimizer steps. `build_learning_rate` turns epoch-based hparams into step counts
with the trial's steps per epoch, so "decay 0.9 per epoch" means the same whatever the batch size.
The schedule names and the ranges of their hparams live in `sweeper._schedule_params`, which the
spec checks without TensorFlow; this module obeys the same table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import keras
from keras import ops
from keras.optimizers import schedules

from sweeper._schedule_params import DEFAULT_SCHEDULE, PARAMS, SCHEDULES, parse_epochs, unknown_schedule

LearningRate = float | schedules.LearningRateSchedule

DEFAULT_LEARNING_RATE = PARAMS["learning_rate"].default


def build_learning_rate(hparams: Mapping[str, Any], epochs: int, steps_per_epoch: int) -> LearningRate:
    """The learning rate that hparam `lr_schedule` names (default "constant"), from base `learning_rate`.

    - constant: `learning_rate` throughout.
    - step: multiplied by `lr_decay_factor` (default 0.1) at the start of each epoch listed in
      `lr_boundaries` (like "3,6"), or else every `lr_step_epochs` epochs (default max(1, epochs // 3)).
    - exponential: multiplied by `lr_decay_rate` (default 0.9) per epoch, decaying smoothly per step.
    - cosine: a linear warmup from 0 over `warmup_epochs` (default 0), then cosine decay over the
      rest of the run down to `lr_min_factor` (default 0.0) times `learning_rate`.
    - cosine_restarts: cosine decay to `lr_min_factor` times the peak over `restart_epochs`
      (default max(1, epochs // 3)), restarting with periods `restart_t_mul` (default 2) times
      longer and peaks `restart_m_mul` (default 1) times lower each time.
    - polynomial: (1 - t)**`lr_power` (default 1, linear) decay to `lr_min_factor` times
      `learning_rate` over the run.
    - one_cycle: the 1cycle policy (see `OneCycle`), peaking at `learning_rate`.
    - reduce_on_plateau: `learning_rate`, which `schedule_callbacks`'s ReduceLROnPlateau lowers.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"epochs and steps_per_epoch must be >= 1, but got ({epochs=}, {steps_per_epoch=})")
    name = str(hparams.get("lr_schedule", DEFAULT_SCHEDULE))
    if name not in SCHEDULES:
        raise ValueError(unknown_schedule(name))
    for param in ("learning_rate", *SCHEDULES[name]):
        if param in hparams and (rule := PARAMS[param].check(hparams[param])) is not None:
            raise ValueError(rule)
    base = _param(hparams, "learning_rate")
    return _BUILDERS[name](hparams, base, epochs, steps_per_epoch)


def schedule_callbacks(hparams: Mapping[str, Any]) -> list[keras.callbacks.Callback]:
    """The callbacks a schedule needs during `fit`: Keras's ReduceLROnPlateau for "reduce_on_plateau".

    It watches `val_loss` and multiplies the rate by `plateau_factor` (default 0.1) after
    `plateau_patience` (default 2) epochs without improvement, never below `lr_min_factor`
    (default 0.0) times `learning_rate`. Other schedules need none.
    """
    if str(hparams.get("lr_schedule", DEFAULT_SCHEDULE)) != "reduce_on_plateau":
        return []
    for param in ("learning_rate", *SCHEDULES["reduce_on_plateau"]):
        if param in hparams and (rule := PARAMS[param].check(hparams[param])) is not None:
            raise ValueError(rule)
    return [keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=_param(hparams, "plateau_factor"),
        patience=int(_param(hparams, "plateau_patience")),
        min_lr=_param(hparams, "learning_rate") * _param(hparams, "lr_min_factor"))]


@keras.saving.register_keras_serializable(package="sweeper")
class OneCycle(schedules.LearningRateSchedule):
    """The 1cycle policy (Smith & Topin), which Keras lacks: up, then down, both by cosine annealing.

    The rate rises from `max_learning_rate / div` to `max_learning_rate` over the first
    `warmup_fraction` of `total_steps`, then falls to `max_learning_rate / (div * final_div)` at
    `total_steps` and stays there. The end value is PyTorch's OneCycleLR's.
    """

    def __init__(self, max_learning_rate: float, total_steps: int, warmup_fraction: float = 0.3,
                 div: float = 25.0, final_div: float = 1e4, name: str = "OneCycle"):
        super().__init__()
        if total_steps < 1 or not 0 < warmup_fraction < 1:
            raise ValueError(f"total_steps >= 1 and 0 < warmup_fraction < 1 must hold, but got "
                             f"({total_steps=}, {warmup_fraction=})")
        self.max_learning_rate = max_learning_rate
        self.total_steps = total_steps
        self.warmup_fraction = warmup_fraction
        self.div = div
        self.final_div = final_div
        self.name = name

    def __call__(self, step: Any) -> Any:
        with keras.name_scope(self.name):
            peak = ops.convert_to_tensor(self.max_learning_rate, dtype="float32")
            total = float(self.total_steps)
            warmup = self.warmup_fraction * total
            step = ops.minimum(ops.cast(step, "float32"), total)
            rising = self._anneal(peak / self.div, peak, ops.minimum(step / warmup, 1.0))
            falling = self._anneal(peak, peak / (self.div * self.final_div),
                                   ops.maximum((step - warmup) / (total - warmup), 0.0))
            return ops.where(step < warmup, rising, falling)

    @staticmethod
    def _anneal(start: Any, end: Any, fraction: Any) -> Any:
        # Cosine from start (fraction 0) to end (fraction 1), as the 1cycle policy anneals.
        return end + (start - end) * 0.5 * (1.0 + ops.cos(math.pi * fraction))

    def get_config(self) -> dict[str, Any]:
        return {"max_learning_rate": self.max_learning_rate, "total_steps": self.total_steps,
                "warmup_fraction": self.warmup_fraction, "div": self.div, "final_div": self.final_div,
                "name": self.name}


def _param(hparams: Mapping[str, Any], name: str) -> float:
    value = hparams.get(name, PARAMS[name].default)
    if value is None:
        raise ValueError(f"{name} has no default; it must be given")
    return float(value)


def _epochs_every_third(epochs: int) -> int:
    return max(1, epochs // 3)


def _constant(hparams: Mapping[str, Any], base: float, epochs: int, steps_per_epoch: int) -> LearningRate:
    return base


def _step(hparams: Mapping[str, Any], base: float, epochs: int, steps_per_epoch: int) -> LearningRate:
    factor = _param(hparams, "lr_decay_factor")
    if "lr_boundaries" in hparams:
        drop_epochs = parse_epochs(hparams["lr_boundaries"])
    else:
        every = int(hparams.get("lr_step_epochs", _epochs_every_third(epochs)))
        # One drop at least: Keras needs one boundary, and one past the end of training never takes effect.
        drop_epochs = [k * every for k in range(1, max(1, epochs // every) + 1)]
    # PiecewiseConstantDecay keeps values[i] while step <= boundaries[i]. Optimizer step s (counted
    # from 0) uses the rate at s, so boundary e*steps_per_epoch - 1 makes the first step of epoch e
    # the first one at the new rate.
    boundaries = [epoch * steps_per_epoch - 1 for epoch in drop_epochs]
    values = [base * factor**k for k in range(len(boundaries) + 1)]
    return schedules.PiecewiseConstantDecay(boundaries, values)


def _exponential(hparams: Mapping[str, Any], base: float, epochs: int, steps_per_epoch: int) -> LearningRate:
    return schedules.ExponentialDecay(base, decay_steps=steps_per_epoch, decay_rate=_param(hparams, "lr_decay_rate"))


def _cosine(hparams: Mapping[str, Any], base: float, epochs: int, steps_per_epoch: int) -> LearningRate:
    alpha = _param(hparams, "lr_min_factor")
    warmup_epochs = int(_param(hparams, "warmup_epochs"))
    if warmup_epochs == 0:
        return schedules.CosineDecay(base, decay_steps=epochs * steps_per_epoch, alpha=alpha)
    if warmup_epochs >= epochs:
        raise ValueError(f"warmup_epochs must be < epochs, to leave epochs to decay in, but got "
                         f"({warmup_epochs=}, {epochs=})")
    # Keras warms up linearly from initial_learning_rate to warmup_target, then decays from there.
    return schedules.CosineDecay(0.0, decay_steps=(epochs - warmup_epochs) * steps_per_epoch, alpha=alpha,
                                 warmup_target=base, warmup_steps=warmup_epochs * steps_per_epoch)


def _cosine_restarts(hparams: Mapping[str, Any], base: float, epochs: int, steps_per_epoch: int) -> LearningRate:
    period = int(hparams.get("restart_epochs", _epochs_every_third(epochs)))
    return schedules.CosineDecayRestarts(base, first_decay_steps=period * steps_per_epoch,
                                         t_mul=_param(hparams, "restart_t_mul"),
                                         m_mul=_param(hparams, "restart_m_mul"),
                                         alpha=_param(hparams, "lr_min_factor"))


def _polynomial(hparams: Mapping[str, Any], base: float, epochs: int, steps_per_epoch: int) -> LearningRate:
    return schedules.PolynomialDecay(base, decay_steps=epochs * steps_per_epoch,
                                     end_learning_rate=base * _param(hparams, "lr_min_factor"),
                                     power=_param(hparams, "lr_power"))


def _one_cycle(hparams: Mapping[str, Any], base: float, epochs: int, steps_per_epoch: int) -> LearningRate:
    return OneCycle(base, total_steps=epochs * steps_per_epoch, warmup_fraction=_param(hparams, "one_cycle_pct"),
                    div=_param(hparams, "one_cycle_div"), final_div=_param(hparams, "one_cycle_final_div"))


def _reduce_on_plateau(hparams: Mapping[str, Any], base: float, epochs: int, steps_per_epoch: int) -> LearningRate:
    # A plain float: the optimizer keeps it in a variable that ReduceLROnPlateau may overwrite, which
    # it cannot do to a schedule.
    return base


_BUILDERS: dict[str, Callable[[Mapping[str, Any], float, int, int], LearningRate]] = {
    "constant": _constant,
    "step": _step,
    "exponential": _exponential,
    "cosine": _cosine,
    "cosine_restarts": _cosine_restarts,
    "polynomial": _polynomial,
    "one_cycle": _one_cycle,
    "reduce_on_plateau": _reduce_on_plateau,
}
if list(_BUILDERS) != list(SCHEDULES):
    raise ImportError(f"schedule builders {list(_BUILDERS)} do not match the known schedules {list(SCHEDULES)}")

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
    return list(SCHEDULES)


def known_optimizers() -> list[str]:
    return list(_OPTIMIZERS)

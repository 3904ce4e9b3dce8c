"""Learning-rate schedule names and the allowed ranges of their hparams, checkable without TensorFlow.

The spec is validated where Keras is never loaded (the server, the CLI); the trainer builds its
schedules from the same table, so the names and ranges checked at spec time are the ones it obeys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from sweeper._domains import Discrete, Fixed, IntInterval, RealInterval, SearchDomain

Problem = tuple[tuple[str, ...], str]
"""(field path, broken rule), as `SpecError` reports them: (("hparams", "lr_decay_factor"), "...")."""


@dataclass(frozen=True)
class ScheduleParam:
    """One schedule hparam: its kind and the range its values must lie in."""

    name: str
    kind: Literal["float", "int", "epochs"]
    """float: any number; int: a whole number; epochs: comma-separated increasing epochs like "3,6"."""
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    default: float | None = None
    """None where there is no default or it depends on the run (see `build_learning_rate`)."""

    @property
    def range(self) -> str:
        """The allowed range in words: "in (0, 1]", ">= 1", "> 0"."""
        if self.kind == "epochs":
            return "a comma-separated list of increasing epochs >= 1, like \"3,6\""
        whole = "an integer " if self.kind == "int" else ""
        lo, hi = _show(self.low), _show(self.high)
        if math.isinf(self.high):
            return f"{whole}{'>' if self.low_open else '>='} {lo}"
        return f"{whole}in {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"

    def allows(self, number: float) -> bool:
        """True when `number` lies in the range (the kind is not checked)."""
        above = number > self.low if self.low_open else number >= self.low
        below = number < self.high if self.high_open else number <= self.high
        return above and below

    def check(self, value: Any) -> str | None:
        """The broken rule when `value` is not allowed, else None."""
        if self.kind == "epochs":
            try:
                parse_epochs(value)
            except ValueError as error:
                return f"{self.name} {error}"
            return None
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not is_number or (self.kind == "int" and not isinstance(value, int)) or not self.allows(value):
            return f"{self.name} must be {self.range}, but got {value!r}"
        return None


def _show(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def parse_epochs(value: Any) -> list[int]:
    """Epochs from "3,6" (or a single int): increasing, each >= 1. Raises ValueError naming the rule."""
    if isinstance(value, int) and not isinstance(value, bool):
        parts = [str(value)]
    elif isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
    else:
        raise ValueError(f"must be a comma-separated list of epochs like \"3,6\", but got {value!r}")
    try:
        epochs = [int(part) for part in parts]
    except ValueError:
        raise ValueError(f"must be a comma-separated list of whole epochs like \"3,6\", but got {value!r}") from None
    if epochs[0] < 1 or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ValueError(f"must list increasing epochs >= 1, but got {value!r}")
    return epochs


_UNIT = dict(low=0.0, high=1.0)

PARAMS: dict[str, ScheduleParam] = {param.name: param for param in [
    ScheduleParam("learning_rate", "float", low=0.0, low_open=True, default=1e-3),
    ScheduleParam("lr_decay_factor", "float", **_UNIT, low_open=True, default=0.1),
    ScheduleParam("lr_step_epochs", "int", low=1),
    ScheduleParam("lr_boundaries", "epochs"),
    ScheduleParam("lr_decay_rate", "float", **_UNIT, low_open=True, default=0.9),
    ScheduleParam("warmup_epochs", "int", low=0, default=0),
    ScheduleParam("lr_min_factor", "float", **_UNIT, default=0.0),
    ScheduleParam("restart_epochs", "int", low=1),
    # Periods that shrink (t_mul < 1) sum to a finite length, after which Keras's restart count is the
    # log of a negative number: the rate becomes NaN.
    ScheduleParam("restart_t_mul", "float", low=1.0, default=2.0),
    ScheduleParam("restart_m_mul", "float", **_UNIT, low_open=True, default=1.0),
    ScheduleParam("lr_power", "float", low=0.0, low_open=True, default=1.0),
    ScheduleParam("one_cycle_pct", "float", **_UNIT, low_open=True, high_open=True, default=0.3),
    ScheduleParam("one_cycle_div", "float", low=1.0, default=25.0),
    ScheduleParam("one_cycle_final_div", "float", low=1.0, default=1e4),
    # Keras's ReduceLROnPlateau refuses a factor >= 1.
    ScheduleParam("plateau_factor", "float", **_UNIT, low_open=True, high_open=True, default=0.1),
    # Keras's default patience (10) is longer than most sweep trials; 2 lets a short trial react.
    ScheduleParam("plateau_patience", "int", low=0, default=2),
]}

SCHEDULES: dict[str, tuple[str, ...]] = {
    "constant": (),
    "step": ("lr_decay_factor", "lr_step_epochs", "lr_boundaries"),
    "exponential": ("lr_decay_rate",),
    "cosine": ("warmup_epochs", "lr_min_factor"),
    "cosine_restarts": ("restart_epochs", "restart_t_mul", "restart_m_mul", "lr_min_factor"),
    "polynomial": ("lr_power", "lr_min_factor"),
    "one_cycle": ("one_cycle_pct", "one_cycle_div", "one_cycle_final_div"),
    "reduce_on_plateau": ("plateau_factor", "plateau_patience", "lr_min_factor"),
}
"""Every known schedule (hparam `lr_schedule`) and the hparams it reads besides `learning_rate`."""

DEFAULT_SCHEDULE = "constant"


def unknown_schedule(name: Any) -> str:
    """The rule an unknown `lr_schedule` breaks, naming the known ones."""
    return f"unknown lr_schedule {name!r}; known schedules: {', '.join(SCHEDULES)}"


def check_schedule_hparams(space: dict[str, SearchDomain]) -> list[Problem]:
    """Problems with the schedule hparams of a search space: unknown schedules, values out of range.

    A fixed value and every discrete value must be allowed; an interval must lie inside the range
    (both its bounds). Hparams that no schedule reads are not looked at.
    """
    problems: list[Problem] = []
    for name, domain in space.items():
        path = ("hparams", name)
        if name == "lr_schedule":
            problems += [(path, rule) for rule in _check_schedule_names(domain)]
        elif name in PARAMS:
            problems += [(path, rule) for rule in _check_param(PARAMS[name], domain)]
    return problems


def _check_schedule_names(domain: SearchDomain) -> list[str]:
    if isinstance(domain, Fixed):
        values: list[Any] = [domain.value]
    elif isinstance(domain, Discrete):
        values = list(domain.values)
    else:
        return [f"lr_schedule must be a schedule name or a discrete list of them, not a {domain.type}; "
                f"known schedules: {', '.join(SCHEDULES)}"]
    return [unknown_schedule(value) for value in values if not (isinstance(value, str) and value in SCHEDULES)]


def _check_param(param: ScheduleParam, domain: SearchDomain) -> list[str]:
    if isinstance(domain, (Fixed, Discrete)):
        values = [domain.value] if isinstance(domain, Fixed) else list(domain.values)
        return [rule for rule in map(param.check, values) if rule is not None]
    if param.kind == "epochs":
        return [f"{param.name} must be {param.range}, so a fixed value or a discrete list, not a {domain.type}"]
    if param.kind == "int" and isinstance(domain, RealInterval):
        return [f"{param.name} must be {param.range}: search it with an int_interval, not a real_interval"]
    assert isinstance(domain, (RealInterval, IntInterval))
    return [f"{param.name} must be {param.range}, but the interval's {end} is {bound}"
            for end, bound in (("min", domain.min), ("max", domain.max)) if not param.allows(bound)]

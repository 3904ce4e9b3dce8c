"""Hyperparameter domains, TensorBoard's three kinds plus a fixed value.

Every domain maps to and from the unit interval [0, 1), so search strategies draw plain numbers and
never see log scales, integer rounding or discrete choices.
"""

from __future__ import annotations

import math
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, model_validator

# TensorBoard stores every number as a double and JSON carries no NaN or infinity, so numbers must be
# finite and integers within a double's exact range. Strings and bools are taken as they are.
_EXACT = 2**53

MAX_HPARAMS = 256
"""The most hparams a sweep may have (and so the most conditions one hparam may name): each is a column
of TensorBoard's HParams table and an axis of its parallel-coordinates view."""
MAX_DISCRETE_VALUES = 10_000
"""The most values a discrete domain (or a condition) may list: a grid enumerates them, and TensorBoard's
HParams dashboard draws each one."""
MAX_TEXT_LENGTH = 1_000
"""The longest string value an hparam may take: it is stored with every trial and shown in TensorBoard's table."""


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, but got {type(value).__name__} {value!r}")
    if isinstance(value, int) and abs(value) > _EXACT:
        raise ValueError(f"must be within +-2**53 to stay exact, but got a {value.bit_length()}-bit integer")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, but got {value}")
    return value


def _integer(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"must be an integer, but got {type(value).__name__} {value!r}")
    return int(_number(value))


def _discrete_value(value: Any) -> bool | int | float | str:
    if isinstance(value, str) and len(value) > MAX_TEXT_LENGTH:
        raise ValueError(f"must be at most {MAX_TEXT_LENGTH} characters, but got {len(value)}")
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return _number(value)
    raise ValueError(f"must be a number, a string or a bool, but got {type(value).__name__} {value!r}")


Number = Annotated[int | float, PlainValidator(_number, json_schema_input_type=float)]
Integer = Annotated[int, PlainValidator(_integer, json_schema_input_type=int)]
DiscreteValue = Annotated[bool | int | float | str,
                          PlainValidator(_discrete_value, json_schema_input_type=bool | int | float | str)]


def value_key(value: Any) -> tuple[type, Any]:
    """What makes two hparam values the same value: equal and of one type (1, 1.0 and True are three values)."""
    return type(value), value


def _kind(value: DiscreteValue) -> str:
    # bool is a subclass of int in Python, so it must be tested first.
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "string"


def _at_most(limit: int, what: str) -> Any:
    """A before-validator refusing a list longer than `limit`, checked before any item is validated."""

    def check(items: Any) -> Any:
        if isinstance(items, (list, dict)) and len(items) > limit:
            raise ValueError(f"at most {limit} {what}, but got {len(items)}")
        return items

    return BeforeValidator(check)


Condition = dict[str, Annotated[list[DiscreteValue], Field(min_length=1),
                                _at_most(MAX_DISCRETE_VALUES, "values")]]
"""`when`: the hparam exists only in trials where each named hparam takes one of the listed values."""


def _listed(when: Any) -> Any:
    # `when: {optimizer: sgd}` is short for `when: {optimizer: [sgd]}`.
    if isinstance(when, dict):
        return {name: value if isinstance(value, list) else [value] for name, value in when.items()}
    return when


class _Domain(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    when: Annotated[Condition | None, BeforeValidator(_listed), _at_most(MAX_HPARAMS, "conditions")] = None

    @property
    def size(self) -> int | None:
        """Number of distinct values, or None for a continuous domain."""
        return None

    def from_unit(self, u: float) -> Any:
        raise NotImplementedError

    def to_unit(self, value: Any) -> float:
        """A point of [0, 1) that `from_unit` maps back to `value` (the middle of its share, where discrete)."""
        raise NotImplementedError

    def grid(self, points: int) -> list[Any]:
        raise NotImplementedError

    def contains(self, value: Any) -> bool:
        raise NotImplementedError

    def when_allows(self, parent: str, value: Any) -> bool:
        """True when `when` names `parent` and lists `value` for it."""
        keys = self._when_keys.get(parent)
        return keys is not None and value_key(value) in keys

    @cached_property
    def _when_keys(self) -> dict[str, frozenset[tuple[type, Any]]]:
        # Sets, built once: with thousands of listed values, a scan per lookup made a grid's branches quadratic.
        return {parent: frozenset(map(value_key, values)) for parent, values in (self.when or {}).items()}


class Discrete(_Domain):
    """A finite list of numbers, strings or bools (one kind per domain, as TensorBoard requires)."""

    type: Literal["discrete"] = "discrete"
    values: Annotated[list[DiscreteValue], _at_most(MAX_DISCRETE_VALUES, "values")]

    @model_validator(mode="after")
    def _check(self) -> Discrete:
        if not self.values:
            raise ValueError("values must not be empty")
        kinds = sorted({_kind(v) for v in self.values})
        if len(kinds) > 1:
            raise ValueError(f"values must all be of one type (numbers, strings or bools), but got {' and '.join(kinds)}")
        if len(set(self.values)) != len(self.values):
            raise ValueError("values must not repeat")
        return self

    @property
    def size(self) -> int:
        return len(self.values)

    def from_unit(self, u: float) -> DiscreteValue:
        return self.values[min(int(u * len(self.values)), len(self.values) - 1)]

    def to_unit(self, value: Any) -> float:
        index = next((i for i, v in enumerate(self.values) if type(v) is type(value) and v == value), None)
        if index is None:
            raise ValueError(f"{value!r} is not one of the values {self.values}")
        return (index + 0.5) / len(self.values)

    def grid(self, points: int) -> list[DiscreteValue]:
        return list(self.values)

    def contains(self, value: Any) -> bool:
        return value_key(value) in self._keys

    @cached_property
    def _keys(self) -> frozenset[tuple[type, Any]]:
        return frozenset(map(value_key, self.values))


class RealInterval(_Domain):
    """Real numbers in [min, max]; `log: true` samples log-uniformly, `step` keeps min + k * step only."""

    type: Literal["real_interval"] = "real_interval"
    min: Number
    max: Number
    log: bool = False
    step: Number | None = None

    @model_validator(mode="after")
    def _check(self) -> RealInterval:
        _check_interval(self.min, self.max, self.log, self.step)
        return self

    @property
    def size(self) -> int | None:
        return None if self.step is None else _steps(self.min, self.max, self.step)

    def from_unit(self, u: float) -> float:
        if self.step is not None:
            return self._value_at(min(int(u * self.size), self.size - 1))
        if self.log:
            lo, hi = math.log(self.min), math.log(self.max)
            return float(min(self.max, max(self.min, math.exp(lo + u * (hi - lo)))))
        return float(min(self.max, self.min + u * (self.max - self.min)))

    def to_unit(self, value: Any) -> float:
        if not self.contains(value):
            raise ValueError(f"{value!r} is not in {self}")
        if self.step is not None:
            return (self._index_of(value) + 0.5) / self.size
        if self.log:
            return (math.log(value) - math.log(self.min)) / (math.log(self.max) - math.log(self.min))
        return (value - self.min) / (self.max - self.min)

    def grid(self, points: int) -> list[float]:
        if self.step is not None:
            return [self._value_at(k) for k in _spread(self.size, points)]
        return [self.from_unit(i / (points - 1)) if 0 < i < points - 1 else float((self.min, self.max)[i > 0])
                for i in range(points)]

    def contains(self, value: Any) -> bool:
        if not (isinstance(value, float) and self.min <= value <= self.max):
            return False
        return self.step is None or self._value_at(self._index_of(value)) == value

    def nearest(self, value: float) -> float:
        """The domain's value nearest `value`: with a step, the stepped value as the decimal the user wrote."""
        if self.step is None:
            return float(min(self.max, max(self.min, value)))
        return self._value_at(self._index_of(value))

    def _value_at(self, k: int) -> float:
        # In decimal, so that 0.1 + 2 * 0.1 is 0.3, the number the user wrote, not 0.30000000000000004.
        assert self.step is not None
        return float(Decimal(repr(self.min)) + k * Decimal(repr(self.step)))

    def _index_of(self, value: float) -> int:
        assert self.step is not None
        return max(0, min(self.size - 1, round((value - self.min) / self.step)))


class IntInterval(_Domain):
    """Integers in [min, max], both ends included; `log: true` samples log-uniformly, `step` keeps min + k * step."""

    type: Literal["int_interval"] = "int_interval"
    min: Integer
    max: Integer
    log: bool = False
    step: Integer | None = None

    @model_validator(mode="after")
    def _check(self) -> IntInterval:
        _check_interval(self.min, self.max, self.log, self.step)
        return self

    @property
    def size(self) -> int:
        return _steps(self.min, self.max, self.step or 1)

    def from_unit(self, u: float) -> int:
        if self.log:
            # Widen by half a step on each side so the end values get their fair share after rounding.
            lo, hi = math.log(self.min - 0.4999), math.log(self.max + 0.4999)
            value = round(math.exp(lo + u * (hi - lo)))
            return int(min(self.max, max(self.min, value)))
        return self.min + min(int(u * self.size), self.size - 1) * (self.step or 1)

    def to_unit(self, value: Any) -> float:
        if not self.contains(value):
            raise ValueError(f"{value!r} is not in {self}")
        if self.log:
            # The middle of the stretch of [0, 1) that rounds to `value`, in the widened log scale.
            lo, hi = math.log(self.min - 0.4999), math.log(self.max + 0.4999)
            below, above = math.log(max(value - 0.5, self.min - 0.4999)), math.log(min(value + 0.5, self.max + 0.4999))
            return ((below + above) / 2 - lo) / (hi - lo)
        return ((value - self.min) // (self.step or 1) + 0.5) / self.size

    def grid(self, points: int) -> list[int]:
        if self.step is not None:
            return [self.min + k * self.step for k in _spread(self.size, points)]
        spaced = RealInterval(min=float(self.min), max=float(self.max), log=self.log).grid(points)
        return list(dict.fromkeys(int(round(v)) for v in spaced))

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.min <= value <= self.max \
            and (value - self.min) % (self.step or 1) == 0


def _check_interval(low: float, high: float, log: bool, step: float | None) -> None:
    if not low < high:
        raise ValueError(f"min ({low}) must be < max ({high})")
    if log and low <= 0:
        raise ValueError(f"min ({low}) must be > 0 when log is true")
    if step is not None:
        if step <= 0:
            raise ValueError(f"step ({step}) must be > 0")
        if log:
            # A log scale has no constant step; which of the two the user meant cannot be guessed.
            raise ValueError("step and log cannot be combined: a log scale has no constant step")
        width = Decimal(repr(high)) - Decimal(repr(low))  # in decimal: 2.01 - 2.0 is 0.01, not 0.00999...
        if Decimal(repr(step)) > width:
            raise ValueError(f"step ({step}) must be at most max - min ({width}), or every trial gets min")


def _steps(low: float, high: float, step: float) -> int:
    """How many of low, low + step, ... lie in [low, high] (a hair of tolerance for decimal steps)."""
    if isinstance(low, int) and isinstance(high, int) and isinstance(step, int):
        return (high - low) // step + 1
    return int(math.floor((Decimal(repr(high)) - Decimal(repr(low))) / Decimal(repr(step)))) + 1


def _spread(size: int, points: int) -> list[int]:
    """`points` indices spread evenly over range(size), both ends included, without repeats."""
    if size <= points:
        return list(range(size))
    return list(dict.fromkeys(round(i * (size - 1) / (points - 1)) for i in range(points)))


class Fixed(_Domain):
    """One value in every trial: a bare value in the spec, or {type: fixed, value: ..., when: ...}."""

    type: Literal["fixed"] = "fixed"
    value: DiscreteValue

    @property
    def size(self) -> int:
        return 1

    def from_unit(self, u: float) -> DiscreteValue:
        return self.value

    def to_unit(self, value: Any) -> float:
        if not self.contains(value):
            raise ValueError(f"{value!r} is not the fixed value {self.value!r}")
        return 0.5

    def grid(self, points: int) -> list[DiscreteValue]:
        return [self.value]

    def contains(self, value: Any) -> bool:
        return type(value) is type(self.value) and value == self.value


Domain = Annotated[Union[Discrete, RealInterval, IntInterval, Fixed], Field(discriminator="type")]
SearchDomain = Discrete | RealInterval | IntInterval | Fixed

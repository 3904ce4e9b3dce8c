"""Hyperparameter domains, TensorBoard's three kinds plus a fixed value.

Every domain maps to and from the unit interval [0, 1), so search strategies draw plain numbers and
never see log scales, integer rounding or discrete choices.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, model_validator

# TensorBoard stores every number as a double and JSON carries no NaN or infinity, so numbers must be
# finite and integers within a double's exact range. Strings and bools are taken as they are.
_EXACT = 2**53


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
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return _number(value)
    raise ValueError(f"must be a number, a string or a bool, but got {type(value).__name__} {value!r}")


Number = Annotated[int | float, PlainValidator(_number, json_schema_input_type=float)]
Integer = Annotated[int, PlainValidator(_integer, json_schema_input_type=int)]
DiscreteValue = Annotated[bool | int | float | str,
                          PlainValidator(_discrete_value, json_schema_input_type=bool | int | float | str)]


def _kind(value: DiscreteValue) -> str:
    # bool is a subclass of int in Python, so it must be tested first.
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "string"


class _Domain(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @property
    def size(self) -> int | None:
        """Number of distinct values, or None for a continuous domain."""
        return None

    def from_unit(self, u: float) -> Any:
        raise NotImplementedError

    def grid(self, points: int) -> list[Any]:
        raise NotImplementedError

    def contains(self, value: Any) -> bool:
        raise NotImplementedError


class Discrete(_Domain):
    """A finite list of numbers, strings or bools (one kind per domain, as TensorBoard requires)."""

    type: Literal["discrete"] = "discrete"
    values: list[DiscreteValue]

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

    def grid(self, points: int) -> list[DiscreteValue]:
        return list(self.values)

    def contains(self, value: Any) -> bool:
        return any(type(v) is type(value) and v == value for v in self.values)


class RealInterval(_Domain):
    """Real numbers in [min, max]; `log: true` samples log-uniformly."""

    type: Literal["real_interval"] = "real_interval"
    min: Number
    max: Number
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> RealInterval:
        _check_interval(self.min, self.max, self.log)
        return self

    def from_unit(self, u: float) -> float:
        if self.log:
            lo, hi = math.log(self.min), math.log(self.max)
            return float(min(self.max, max(self.min, math.exp(lo + u * (hi - lo)))))
        return float(self.min + u * (self.max - self.min))

    def grid(self, points: int) -> list[float]:
        return [self.from_unit(i / (points - 1)) if 0 < i < points - 1 else float((self.min, self.max)[i > 0])
                for i in range(points)]

    def contains(self, value: Any) -> bool:
        return isinstance(value, float) and self.min <= value <= self.max


class IntInterval(_Domain):
    """Integers in [min, max], both ends included; `log: true` samples log-uniformly."""

    type: Literal["int_interval"] = "int_interval"
    min: Integer
    max: Integer
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntInterval:
        _check_interval(self.min, self.max, self.log)
        return self

    @property
    def size(self) -> int:
        return self.max - self.min + 1

    def from_unit(self, u: float) -> int:
        if self.log:
            # Widen by half a step on each side so the end values get their fair share after rounding.
            lo, hi = math.log(self.min - 0.4999), math.log(self.max + 0.4999)
            value = round(math.exp(lo + u * (hi - lo)))
        else:
            value = math.floor(self.min + u * (self.max - self.min + 1))
        return int(min(self.max, max(self.min, value)))

    def grid(self, points: int) -> list[int]:
        spaced = RealInterval(min=float(self.min), max=float(self.max), log=self.log).grid(points)
        return list(dict.fromkeys(int(round(v)) for v in spaced))

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.min <= value <= self.max


def _check_interval(low: float, high: float, log: bool) -> None:
    if not low < high:
        raise ValueError(f"min ({low}) must be < max ({high})")
    if log and low <= 0:
        raise ValueError(f"min ({low}) must be > 0 when log is true")


class Fixed(BaseModel):
    """A bare value in the spec: the same in every trial."""

    model_config = ConfigDict(frozen=True)
    value: DiscreteValue

    @property
    def size(self) -> int:
        return 1

    def from_unit(self, u: float) -> DiscreteValue:
        return self.value

    def grid(self, points: int) -> list[DiscreteValue]:
        return [self.value]

    def contains(self, value: Any) -> bool:
        return value == self.value


Domain = Annotated[Union[Discrete, RealInterval, IntInterval], Field(discriminator="type")]
SearchDomain = Discrete | RealInterval | IntInterval | Fixed

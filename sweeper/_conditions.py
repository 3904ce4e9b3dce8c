"""Conditional hparams: `when: {optimizer: sgd}` makes an hparam exist only where the condition holds.

An inactive hparam is absent from the trial, not given a placeholder value, so a model builder's
default applies and the TensorBoard session does not show a value that played no part. Conditions
name discrete (or fixed) hparams only, so that the grid can enumerate each branch exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sweeper._domains import Discrete, Fixed, SearchDomain

Problem = tuple[tuple[str, ...], str]

MAX_BRANCHES = 100_000
"""The most combinations of parent values a sweep may have: the grid keeps one entry per branch."""


def check_conditions(space: Mapping[str, SearchDomain]) -> list[Problem]:
    """Problems with the `when` of every hparam: unknown or non-discrete parents, values they never take, cycles."""
    problems: list[Problem] = []
    for name, domain in space.items():
        for parent, values in (domain.when or {}).items():
            path = ("hparams", name, "when", parent)
            if parent == name:
                problems.append((path, f"{name} cannot depend on itself"))
            elif parent not in space:
                problems.append((path, f"names no hparam of this sweep; hparams: {', '.join(space)}"))
            elif not isinstance(space[parent], (Discrete, Fixed)):
                problems.append((path, f"a condition can only name a discrete or fixed hparam, "
                                       f"but {parent} is a {space[parent].type}"))
            else:
                never = [value for value in values if not space[parent].contains(value)]
                if never:
                    problems.append((path, f"{parent} never takes {', '.join(map(repr, never))}; "
                                           f"its values are {_values(space[parent])}"))
    if not problems:
        cycle = _find_cycle(space)
        if cycle:
            problems.append((("hparams", cycle[0], "when"), f"conditions form a cycle: {' -> '.join(cycle)}"))
    named = parents(space)
    branches = math.prod(space[name].size or 1 for name in named)
    if branches > MAX_BRANCHES:
        problems.append((("hparams",), f"the hparams that conditions name ({', '.join(named)}) have {branches} "
                                       f"combinations of values; at most {MAX_BRANCHES} are allowed"))
    return problems


def evaluation_order(space: Mapping[str, SearchDomain]) -> list[str]:
    """The hparams with every condition's parents before the hparam itself (spec order otherwise)."""
    order: list[str] = []
    placed: set[str] = set()

    def place(name: str) -> None:
        if name in placed:
            return
        placed.add(name)
        for parent in (space[name].when or {}):
            place(parent)
        order.append(name)

    for name in space:
        place(name)
    return order


def active_config(space: Mapping[str, SearchDomain], config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` without the hparams whose conditions do not hold, in spec order.

    A condition on an inactive parent does not hold: the child of an absent hparam is absent too.
    """
    active: dict[str, Any] = {}
    for name in evaluation_order(space):
        if holds(space[name], active) and name in config:
            active[name] = config[name]
    return {name: active[name] for name in space if name in active}


def holds(domain: SearchDomain, active: Mapping[str, Any]) -> bool:
    """True when every parent named in the domain's `when` is active with one of the listed values."""
    return all(parent in active and domain.when_allows(parent, active[parent]) for parent in (domain.when or {}))


def parents(space: Mapping[str, SearchDomain]) -> list[str]:
    """The hparams that some condition names, in spec order."""
    named = {parent for domain in space.values() for parent in (domain.when or {})}
    return [name for name in space if name in named]


def _values(domain: SearchDomain) -> str:
    return repr([domain.value] if isinstance(domain, Fixed) else list(domain.values))  # type: ignore[union-attr]


def _find_cycle(space: Mapping[str, SearchDomain]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> list[str] | None:
        if name in visiting:
            return visiting[visiting.index(name):] + [name]
        if name in done:
            return None
        visiting.append(name)
        for parent in (space[name].when or {}):
            found = visit(parent)
            if found:
                return found
        visiting.pop()
        done.add(name)
        return None

    for name in space:
        found = visit(name)
        if found:
            return found
    return None

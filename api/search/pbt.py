"""Population Based Training's decision on a member's report at the end of an interval, as pure functions.

Asynchronous, as in the PBT paper and Ray Tune: a member is compared, when it reports a boundary epoch,
with the members that have reported that epoch so far. In the bottom quarter it exploits a member of the
top quarter (copies its weights and hparams, saved after that epoch) and explores (perturbs the copied
mutable hparams). Every random choice is seeded by (sweep seed, member number, epoch), so the same report
judged again, by any server process, gives the same answer. The storage layer reads the values, stores the
decision with the epoch, and turns it into the worker's answer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sweeper import Discrete, IntInterval, RealInterval, SearchDomain, value_key

QUANTILE = 0.25
"""The share of the members compared that exploits (the bottom) and that is copied (the top)."""
RESAMPLE_PROBABILITY = 0.25
"""Explore draws a mutable hparam afresh from its domain with this probability, else perturbs it."""
PERTURB_FACTORS = (0.8, 1.2)
"""An interval hparam is multiplied by one of these (then clipped to its domain)."""


def is_boundary(epoch: int, interval: int, epochs: int) -> bool:
    """Whether a member is judged after `epoch` (from 0): at the end of every interval but its last epoch."""
    return (epoch + 1) % interval == 0 and epoch < epochs - 1


def boundaries(interval: int, epochs: int) -> list[int]:
    """Every epoch after which a member is judged (and saves a snapshot another member may copy)."""
    return [epoch for epoch in range(interval - 1, epochs - 1, interval)]


def quartiles(values: Mapping[int, float | None], goal: str) -> tuple[list[int], list[int]]:
    """The (bottom, top) members by their objective values: ceil(n/4) each, at most n//2, so never the same one.

    A member without a finite value ranks last; equal values rank by member number (the lower first).
    """
    def rank(member: int) -> tuple[bool, float, int]:
        value = values[member]
        if value is None or not math.isfinite(value):
            return True, 0.0, member
        return False, -value if goal == "maximize" else value, member

    ordered = sorted(values, key=rank)
    count = min(math.ceil(len(ordered) * QUANTILE), len(ordered) // 2)
    return ordered[len(ordered) - count:], ordered[:count]


def seeded(seed: int, member: int, epoch: int) -> random.Random:
    """The random choices of one decision: the same for the same sweep seed, member and epoch."""
    return random.Random(f"sweeper:pbt:{seed}:{member}:{epoch}")


def explore(hparams: Mapping[str, Any], space: Mapping[str, SearchDomain], mutable: Sequence[str],
            rng: random.Random) -> dict[str, Any]:
    """`hparams` with each mutable one resampled (probability 0.25) or perturbed: an interval's value times
    0.8 or 1.2, clipped to the domain (an int interval's rounded to its step), a discrete one moved to a
    neighbouring value (in the order listed)."""
    explored = dict(hparams)
    for name in mutable:
        domain = space[name]
        if rng.random() < RESAMPLE_PROBABILITY:
            explored[name] = domain.from_unit(rng.random())
        else:
            explored[name] = perturb(domain, hparams[name], rng)
    return explored


def perturb(domain: SearchDomain, value: Any, rng: random.Random) -> Any:
    """The value moved a step: see `explore`."""
    if isinstance(domain, RealInterval):
        return domain.nearest(float(value) * rng.choice(PERTURB_FACTORS))
    if isinstance(domain, IntInterval):
        step = domain.step or 1
        scaled = round((value * rng.choice(PERTURB_FACTORS) - domain.min) / step) * step + domain.min
        return int(min(domain.max - (domain.max - domain.min) % step, max(domain.min, scaled)))
    if isinstance(domain, Discrete):
        keys = [value_key(listed) for listed in domain.values]
        if value_key(value) not in keys:  # not one of its values (cannot happen for a member's own): drawn afresh
            return domain.from_unit(rng.random())
        index = keys.index(value_key(value))
        return domain.values[min(len(domain.values) - 1, max(0, index + rng.choice((-1, 1))))]
    return value  # a fixed hparam: the spec allows none to be mutable


@dataclass(frozen=True)
class Exploitation:
    """A member of the bottom quarter copies `donor` (a member number) and trains on with `hparams`."""

    donor: int
    hparams: dict[str, Any]
    compared: int
    """How many members were compared (those that had reported the epoch)."""


def decide(member: int, epoch: int, values: Mapping[int, float | None], goal: str,
           donor_hparams: Mapping[int, Mapping[str, Any]], space: Mapping[str, SearchDomain],
           mutable: Sequence[str], seed: int) -> Exploitation | None:
    """The decision on `member` after `epoch`, given every compared member's objective value at that epoch
    and the hparams each trained that epoch with: an exploitation, or None (it goes on as it is)."""
    bottom, top = quartiles(values, goal)
    if member not in bottom:
        return None
    rng = seeded(seed, member, epoch)
    donor = rng.choice(sorted(top))
    return Exploitation(donor, explore(donor_hparams[donor], space, mutable, rng), len(values))

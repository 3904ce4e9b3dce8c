"""A trial's life and its sweep's, as one pure state machine: every event, its guard and its effect.

Read this module to know what happens when a trial is claimed, fails, is released or loses its worker.
No database here: the storage layer loads a trial (`TrialLife`) and its sweep's status, calls
`apply`, and writes back what changed. The table `TRANSITIONS` lists every (state, event) that is
allowed; any other pair is refused, with a reason, and changes nothing.

Fencing: each claim of a trial, a reclaim by the worker that already holds it included, issues a new
lease token, larger than any before it. Every later call on the trial carries its token, and only a
call with the current token of a running trial is its holder's. A process that was superseded (its
worker restarted and claimed again, or its lease expired and another worker took the trial) gets a
`LeaseConflict` on its next call, and stops. So at most one process ever acts as a trial's holder.

A report that ended a lease (complete, fail, release) and arrives again with the same token is a
retry after a lost answer: `apply` marks it `repeated`, nothing changes, and the caller answers with
the trial as stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from sweeper.messages import Action, LeaseConflictReason, SweepStatus, TrialState

__all__ = [
    "ENDED_EARLY", "OPEN", "Caller", "LeaseConflict", "Step", "SweepEvent", "SweepStateConflict", "TRANSITIONS",
    "TrialEvent", "TrialLife", "apply", "directive", "sweep_after", "sweep_after_failure", "sweep_end",
]

OPEN = (SweepStatus.running, SweepStatus.paused)
"""Sweeps that have not ended: they may still be paused, resumed, cancelled, completed or failed."""
ENDED_EARLY = (SweepStatus.cancelled, SweepStatus.failed)
"""Sweeps whose running trials are told to cancel, and end cancelled whatever their worker reports."""


class TrialEvent(StrEnum):
    claim = "claim"
    """A worker takes a pending trial (or a new one the search just generated)."""
    reclaim = "reclaim"
    """A worker claims again while it holds a running trial (it restarted): it gets it back, fenced anew."""
    heartbeat = "heartbeat"
    """The holder extends its lease."""
    report = "report"
    """The holder reports an epoch's metrics (which extends the lease too)."""
    complete = "complete"
    """The holder reports the final metrics."""
    fail = "fail"
    """The holder reports a failure, retryable or not."""
    release = "release"
    """The holder hands the trial back unfinished (it shuts down): pending again, the attempt given back."""
    expire = "expire"
    """The lease ran out: the worker is lost, which counts as a crash."""
    cancel = "cancel"
    """The sweep ended (cancelled or failed): a trial that is not running is cancelled at once."""
    prune = "prune"
    """The server judged the holder's trial hopeless: it ends pruned with what it reached."""


WORKER_CALLS = frozenset({TrialEvent.heartbeat, TrialEvent.report, TrialEvent.complete, TrialEvent.fail,
                          TrialEvent.release})
"""Events that a worker's call on a held trial brings: each needs the caller to hold the current lease."""
LEASE_ENDINGS = frozenset({TrialEvent.complete, TrialEvent.fail, TrialEvent.release})
"""Reports that end the caller's lease: sent again with the same token, they are repeats, not conflicts."""


@dataclass(frozen=True, slots=True)
class TrialLife:
    """What the lifecycle knows of a trial: its state and its latest lease."""

    state: TrialState
    worker_id: str | None = None
    """The holder while running; kept after a failure, to tell which worker the trial failed on."""
    lease_token: int = 0
    """The latest claim's token; 0 before the first claim."""
    attempts: int = 0
    """Claims that counted: a release gives its attempt back."""
    lease_end: TrialEvent | None = None
    """The event that ended the latest lease; None while it runs (or before any claim)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a call on a trial: a worker id and the lease token of its claim."""

    worker_id: str
    lease_token: int


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one event."""

    trial: TrialLife
    action: Action = Action.continue_
    """What the worker is told (the answer to a heartbeat or report)."""
    repeated: bool = False
    """A report sent again after its lease ended with it: nothing changed, answer with the stored trial."""
    failed_for_good: bool = False
    """The trial failed with no retry left: one more towards the sweep's max_failures."""
    succeeded: bool = False
    """The trial completed: the sweep's run of failures is broken."""


class LeaseConflict(Exception):
    """The event is not allowed in the trial's state, or the caller does not hold its lease; nothing changes."""

    def __init__(self, message: str, reason: LeaseConflictReason = LeaseConflictReason.not_running):
        super().__init__(message)
        self.reason = reason


class SweepStateConflict(Exception):
    """A sweep control (pause, resume, cancel) that the sweep's status does not allow; nothing changes."""


@dataclass(frozen=True, slots=True)
class _Context:
    sweep: SweepStatus
    caller: Caller | None
    retry: bool
    max_attempts: int


Effect = Callable[[TrialLife, _Context], Step]


def _claim(trial: TrialLife, context: _Context) -> Step:
    assert context.caller is not None
    if context.sweep != SweepStatus.running:  # a paused sweep holds back what has not started; an ended one ran out
        raise LeaseConflict(f"belongs to a {context.sweep.value} sweep: only a running sweep's trials are claimed")
    return Step(TrialLife(TrialState.running, context.caller.worker_id, trial.lease_token + 1, trial.attempts + 1))


def _reclaim(trial: TrialLife, context: _Context) -> Step:
    assert context.caller is not None
    if context.sweep in ENDED_EARLY:  # its sweep ended while the worker was away: it must not start again
        return _cancelled(trial)
    return Step(replace(trial, worker_id=context.caller.worker_id, lease_token=trial.lease_token + 1))


def _extend(trial: TrialLife, context: _Context) -> Step:
    # A paused sweep's running trials finish normally; an ended sweep's stop now.
    return Step(trial, action=directive(context.sweep))


def _complete(trial: TrialLife, context: _Context) -> Step:
    if context.sweep in ENDED_EARLY:  # its failure or success no longer matters
        return Step(replace(trial, state=TrialState.cancelled, lease_end=TrialEvent.complete))
    return Step(replace(trial, state=TrialState.completed, lease_end=TrialEvent.complete), succeeded=True)


def _end_attempt(trial: TrialLife, context: _Context, event: TrialEvent) -> Step:
    """An attempt that did not succeed: pending again while attempts remain and a retry is worth it, else failed."""
    if context.sweep in ENDED_EARLY:
        return Step(replace(trial, state=TrialState.cancelled, lease_end=event))
    if context.retry and trial.attempts < context.max_attempts:
        return Step(replace(trial, state=TrialState.pending, worker_id=None, lease_end=event))
    # The worker id stays, to tell which worker the trial was lost or failed on.
    return Step(replace(trial, state=TrialState.failed, lease_end=event), failed_for_good=True)


def _fail(trial: TrialLife, context: _Context) -> Step:
    return _end_attempt(trial, context, TrialEvent.fail)


def _expire(trial: TrialLife, context: _Context) -> Step:
    # A lost worker is a crash: nothing says the configuration is at fault, so it is retried.
    return _end_attempt(trial, replace(context, retry=True), TrialEvent.expire)


def _release(trial: TrialLife, context: _Context) -> Step:
    if context.sweep in ENDED_EARLY:
        return _cancelled(trial, TrialEvent.release)
    # The trial did not fail: the attempt its claim counted is given back.
    return Step(replace(trial, state=TrialState.pending, worker_id=None, attempts=max(0, trial.attempts - 1),
                        lease_end=TrialEvent.release))


def _cancel(trial: TrialLife, context: _Context) -> Step:
    return _cancelled(trial)


def _prune(trial: TrialLife, context: _Context) -> Step:
    # Not a failure: the trial ran, and its curve counts for the search (storage breaks a run of failures).
    return Step(replace(trial, state=TrialState.pruned, lease_end=TrialEvent.prune), action=Action.prune)


def _told_to_stop(trial: TrialLife, context: _Context) -> Step:
    """A heartbeat or report from the pruned trial's holder before it has stopped: the answer is prune again."""
    return Step(trial, action=Action.prune, repeated=True)


def _wound_up(event: TrialEvent) -> Effect:
    """The pruned trial's holder ends its lease (complete with the metrics it reached, or fail or release on
    the way out): the trial stays pruned; the same report again is a repeat."""

    def effect(trial: TrialLife, context: _Context) -> Step:
        return Step(replace(trial, lease_end=event))

    return effect


def _cancelled(trial: TrialLife, event: TrialEvent = TrialEvent.cancel) -> Step:
    return Step(replace(trial, state=TrialState.cancelled, lease_end=event), action=Action.cancel)


_S, _E = TrialState, TrialEvent
TRANSITIONS: dict[tuple[TrialState, TrialEvent], Effect] = {
    (_S.pending, _E.claim): _claim,
    (_S.pending, _E.cancel): _cancel,
    (_S.running, _E.reclaim): _reclaim,
    (_S.running, _E.heartbeat): _extend,
    (_S.running, _E.report): _extend,
    (_S.running, _E.complete): _complete,
    (_S.running, _E.fail): _fail,
    (_S.running, _E.release): _release,
    (_S.running, _E.expire): _expire,
    (_S.running, _E.prune): _prune,
    # The server pruned the trial at an epoch report; its holder stops after that epoch and ends its lease.
    (_S.pruned, _E.heartbeat): _told_to_stop,
    (_S.pruned, _E.report): _told_to_stop,
    (_S.pruned, _E.complete): _wound_up(_E.complete),
    (_S.pruned, _E.fail): _wound_up(_E.fail),
    (_S.pruned, _E.release): _wound_up(_E.release),
    # A running trial of an ended sweep is cancelled by its holder's next call (the answer says "cancel"),
    # or by a reclaim or its lease's expiry if the holder is gone.
}
"""Every allowed (state, event) and its effect. Completed, failed and cancelled trials take no event; a pruned
one takes only its holder's last calls, under the lease that was pruned."""


def apply(trial: TrialLife, event: TrialEvent, *, sweep: SweepStatus, caller: Caller | None = None,
          retry: bool = False, max_attempts: int = 1) -> Step:
    """The trial after `event`, with what to tell the worker and what it means for the sweep.

    `caller` is the worker behind a claim, reclaim or worker call; `retry` says whether a failure is worth
    another attempt (retryable, or a crash); `max_attempts` is the sweep's. Raises LeaseConflict when the
    event is not allowed in the trial's state or the caller does not hold the current lease.
    """
    if event in WORKER_CALLS or event in (TrialEvent.claim, TrialEvent.reclaim):
        if caller is None:
            raise ValueError(f"a {event.value} needs the caller's worker id and lease token")
    if event in WORKER_CALLS:
        assert caller is not None
        if _repeats(trial, event, caller):
            return Step(trial, repeated=True, action=Action.cancel if trial.state == TrialState.cancelled
                        else Action.continue_)
        _require_lease(trial, caller)
    elif event is TrialEvent.reclaim and caller is not None and caller.worker_id != trial.worker_id:
        raise LeaseConflict(f"is leased to worker {trial.worker_id!r}: worker {caller.worker_id!r} cannot reclaim it",
                            LeaseConflictReason.leased_to_another)
    effect = TRANSITIONS.get((trial.state, event))
    if effect is None:
        raise LeaseConflict(f"is {trial.state.value}: a {trial.state.value} trial cannot take a {event.value}")
    return effect(trial, _Context(sweep, caller, retry, max_attempts))


def _repeats(trial: TrialLife, event: TrialEvent, caller: Caller) -> bool:
    return (event in LEASE_ENDINGS and trial.lease_end is event and trial.lease_token == caller.lease_token
            and trial.lease_token > 0)


def _require_lease(trial: TrialLife, caller: Caller) -> None:
    winding_up = trial.state == TrialState.pruned and trial.lease_end is TrialEvent.prune
    if trial.state != TrialState.running and not winding_up:
        raise LeaseConflict(f"is {trial.state.value}, not running: worker {caller.worker_id!r} holds no lease on it")
    if caller.worker_id != trial.worker_id:
        raise LeaseConflict(f"is leased to worker {trial.worker_id!r}, not to {caller.worker_id!r}",
                            LeaseConflictReason.leased_to_another)
    if caller.lease_token != trial.lease_token:
        raise LeaseConflict(f"is held under lease token {trial.lease_token}, so worker {caller.worker_id!r}'s token "
                            f"{caller.lease_token} is stale: a later claim by the same worker id took it over",
                            LeaseConflictReason.superseded)


def directive(sweep: SweepStatus) -> Action:
    """What a running trial's holder is told at each call: go on, unless its sweep has ended."""
    return Action.cancel if sweep in ENDED_EARLY else Action.continue_


# -- sweeps ------------------------------------------------------------------------------------------


class SweepEvent(StrEnum):
    pause = "pause"
    resume = "resume"
    cancel = "cancel"
    fail = "fail"
    """Too many trials failed in a row, or the search cannot generate its next trial."""
    finish = "finish"
    """Every trial was handed out, none is pending or running, and at least one gave a result (`sweep_end`)."""
    extend = "extend"
    """More trials: a completed or failed sweep runs again, a running or paused one keeps its status."""


_SWEEP_TRANSITIONS: dict[tuple[SweepStatus, SweepEvent], SweepStatus] = {
    (SweepStatus.running, SweepEvent.pause): SweepStatus.paused,
    (SweepStatus.paused, SweepEvent.resume): SweepStatus.running,
    **{(status, SweepEvent.cancel): SweepStatus.cancelled for status in OPEN},
    **{(status, SweepEvent.fail): SweepStatus.failed for status in OPEN},
    # A paused sweep with nothing left to run is done too: pausing only holds back trials not yet started.
    **{(status, SweepEvent.finish): SweepStatus.completed for status in OPEN},
    **{(status, SweepEvent.extend): status for status in OPEN},
    # A failed sweep runs again too: once its cause is mended (a data file put in place, say), more trials are
    # the way to go on. A cancelled one was stopped on purpose: extending it would undo that.
    (SweepStatus.completed, SweepEvent.extend): SweepStatus.running,
    (SweepStatus.failed, SweepEvent.extend): SweepStatus.running,
}
_DONE = {SweepEvent.pause: "paused", SweepEvent.resume: "resumed", SweepEvent.cancel: "cancelled",
         SweepEvent.fail: "failed", SweepEvent.finish: "completed", SweepEvent.extend: "extended"}


def sweep_after(status: SweepStatus, event: SweepEvent) -> SweepStatus:
    """The sweep's status after `event`; SweepStateConflict when its status does not allow it.

    Ending a sweep early (cancel, fail) also cancels its pending trials (`TrialEvent.cancel`); its running
    ones are told to cancel at their next call.
    """
    after = _SWEEP_TRANSITIONS.get((status, event))
    if after is None:
        allowed = [before.value for before, on in _SWEEP_TRANSITIONS if on is event]
        raise SweepStateConflict(f"is {status.value}: only a {' or '.join(allowed)} sweep can be {_DONE[event]}")
    return after


def sweep_end(completed: int, pruned: int) -> SweepEvent:
    """How a sweep with every trial handed out and none left to run ends, from its completed and pruned trials.

    A pruned trial counts as a result: it trained, its curve is logged, and the stopping rule judged it
    against the others, so a sweep whose trials were all pruned shows what its search found (its rule was
    harsh, its training was not broken). Only a sweep where no trial gave a result, every one of them failed,
    fails: reading it as completed would hide that nothing worked.
    """
    return SweepEvent.finish if completed + pruned > 0 else SweepEvent.fail


def sweep_after_failure(status: SweepStatus, consecutive_failures: int, max_failures: int) -> SweepStatus:
    """The sweep's status once a trial failed for good, `consecutive_failures` counting it: failed at the limit."""
    if status in OPEN and consecutive_failures >= max_failures:
        return sweep_after(status, SweepEvent.fail)
    return status

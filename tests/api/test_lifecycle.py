"""api.lifecycle on its own: every (trial state, event) and (sweep status, sweep event) pinned as a table written
out here, and the fencing of leases under random interleavings of processes, lease expiries and sweep ends.

The tables are the expectations, written from what each event means, never read back from `TRANSITIONS`:
a table derived from the code under test would agree with any change to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from api.lifecycle import (Caller, LeaseConflict, Step, SweepEvent, SweepStateConflict, TrialEvent, TrialLife, apply,
                           sweep_after, sweep_after_failure, sweep_end)
from sweeper.messages import Action, SweepStatus, TrialState

CONFLICT = "conflict"
"""The event is refused (LeaseConflict) and nothing changes."""
REPEATED = "repeated"
"""A report that ended the lease, sent again with its token: accepted, nothing changes."""

HOLDER = Caller("w", 3)
"""The caller of every claim, reclaim and worker call in the tables: worker "w" with the trial's current token."""
MAX_ATTEMPTS = 2

# One trial in each state; those that are not pending were last held by worker "w" under token 3, and those
# that ended got there through that lease, so the holder's own report of it is a repeat.
TRIALS: dict[str, TrialLife] = {
    "pending": TrialLife(TrialState.pending, None, 3, 0, TrialEvent.release),  # "w" handed it back
    "running": TrialLife(TrialState.running, "w", 3, 1),
    "completed": TrialLife(TrialState.completed, "w", 3, 1, TrialEvent.complete),
    "failed": TrialLife(TrialState.failed, "w", 3, 1, TrialEvent.fail),
    "pruned": TrialLife(TrialState.pruned, "w", 3, 1, TrialEvent.prune),
    "cancelled": TrialLife(TrialState.cancelled, "w", 3, 1, TrialEvent.cancel),  # its sweep ended
}

SERVER_EVENTS = frozenset({TrialEvent.expire, TrialEvent.cancel, TrialEvent.prune})
"""Events the server brings on its own: no caller."""
WORKER_CALLS = (TrialEvent.heartbeat, TrialEvent.report, TrialEvent.complete, TrialEvent.fail, TrialEvent.release)
LEASE_ENDINGS = (TrialEvent.complete, TrialEvent.fail, TrialEvent.release)

X, R = CONFLICT, REPEATED  # short, to keep the tables' columns in line
STATES = ("pending", "running", "completed", "failed", "pruned", "cancelled")

# Each event (a row) on the trial in each state (a column): a running sweep, retry False, max_attempts 2,
# the running trial on its first attempt. The pruned trial was pruned at a report of its holder, who may still
# heartbeat or report before it stops (the answer is prune again) and then ends its lease; it stays pruned.
# fmt: off
TABLE: dict[str, tuple[str, ...]] = {
    #              pending      running      completed  failed  pruned  cancelled
    "claim":     ("running",   X,           X,         X,      X,      X),
    "reclaim":   (X,           "running",   X,         X,      X,      X),
    "heartbeat": (X,           "running",   X,         X,      R,      X),  # pruned: told to prune again
    "report":    (X,           "running",   X,         X,      R,      X),
    "complete":  (X,           "completed", R,         X,      "pruned", X),  # pruned: its holder winds up
    "fail":      (X,           "failed",    X,         R,      "pruned", X),
    "release":   (R,           "pending",   X,         X,      "pruned", X),
    "expire":    (X,           "pending",   X,         X,      X,      X),  # a crash: retried, an attempt left
    "cancel":    ("cancelled", X,           X,         X,      X,      X),  # running: cancelled at its next call
    "prune":     (X,           "pruned",    X,         X,      X,      X),
}

# Each event on the running trial of a sweep that is not running. A paused sweep only holds back trials not
# yet started; an ended one's running trials end cancelled whatever their worker reports (a prune still ends
# pruned).
SWEEP_VARIANTS: dict[str, tuple[str, ...]] = {
    #              paused       cancelled    failed
    "claim":     (X,           X,           X),
    "reclaim":   ("running",   "cancelled", "cancelled"),
    "heartbeat": ("running",   "running",   "running"),
    "report":    ("running",   "running",   "running"),
    "complete":  ("completed", "cancelled", "cancelled"),
    "fail":      ("failed",    "cancelled", "cancelled"),
    "release":   ("pending",   "cancelled", "cancelled"),
    "expire":    ("pending",   "cancelled", "cancelled"),
    "cancel":    (X,           X,           X),
    "prune":     ("pruned",    "pruned",    "pruned"),
}
SWEEPS = ("paused", "cancelled", "failed")
# fmt: on


def _caller_for(event: TrialEvent) -> Caller | None:
    return None if event in SERVER_EVENTS else HOLDER


def _outcome(trial: TrialLife, event: TrialEvent, *, sweep: SweepStatus = SweepStatus.running,
             caller: Caller | None = None, retry: bool = False,
             max_attempts: int = MAX_ATTEMPTS) -> tuple[str, Step | None]:
    """The table's word for what `event` does to `trial`, and the step when it was accepted."""
    try:
        step = apply(trial, event, sweep=sweep, caller=caller if caller is not None else _caller_for(event),
                     retry=retry, max_attempts=max_attempts)
    except LeaseConflict:
        return CONFLICT, None
    if step.repeated:
        assert step.trial == trial, "a repeat must change nothing"
        return REPEATED, step
    return step.trial.state.value, step


def test_the_tables_cover_every_state_and_event() -> None:
    # A state or event added to the lifecycle must get its row or column here.
    assert set(STATES) == set(TRIALS) == {state.value for state in TrialState} and len(STATES) == len(TrialState)
    assert set(TABLE) == set(SWEEP_VARIANTS) == {event.value for event in TrialEvent}
    assert all(len(row) == len(STATES) for row in TABLE.values())
    assert all(len(row) == len(SWEEPS) for row in SWEEP_VARIANTS.values())


@pytest.mark.parametrize(("state", "event"), [(state, event) for state in STATES for event in TABLE])
def test_each_event_in_each_trial_state_has_the_tabled_outcome(state: str, event: str) -> None:
    trial = TRIALS[state]
    outcome, step = _outcome(trial, TrialEvent(event))
    assert outcome == TABLE[event][STATES.index(state)]
    if step is None or step.repeated:
        return
    # Only a claim issues a token: a claim and a reclaim (a claim by the holder) both fence off the one before.
    issues_token = event in ("claim", "reclaim")
    assert step.trial.lease_token == trial.lease_token + (1 if issues_token else 0)
    assert step.action == (Action.prune if event == "prune" else Action.cancel if event == "cancel"
                           else Action.continue_)


@pytest.mark.parametrize(("sweep", "event"), [(sweep, event) for sweep in SWEEPS for event in SWEEP_VARIANTS])
def test_each_event_on_a_running_trial_of_a_sweep_that_is_not_running_has_the_tabled_outcome(
        sweep: str, event: str) -> None:
    outcome, step = _outcome(TRIALS["running"], TrialEvent(event), sweep=SweepStatus(sweep))
    assert outcome == SWEEP_VARIANTS[event][SWEEPS.index(sweep)]
    if step is not None and sweep != "paused":
        # Whatever the worker reported, a trial of an ended sweep neither succeeds nor counts as a failure.
        assert not step.succeeded and not step.failed_for_good


@pytest.mark.parametrize(("sweep", "action"), [
    ("running", Action.continue_),
    ("paused", Action.continue_),  # a paused sweep's running trials finish normally
    ("cancelled", Action.cancel),
    ("failed", Action.cancel),
])
@pytest.mark.parametrize("event", ["heartbeat", "report"])
def test_a_holders_heartbeat_or_report_tells_it_to_cancel_once_its_sweep_ended(
        sweep: str, action: Action, event: str) -> None:
    step = apply(TRIALS["running"], TrialEvent(event), sweep=SweepStatus(sweep), caller=HOLDER)
    assert step.action is action
    assert step.trial == TRIALS["running"]


def test_a_reclaim_of_a_trial_whose_sweep_ended_tells_its_worker_to_cancel() -> None:
    step = apply(TRIALS["running"], TrialEvent.reclaim, sweep=SweepStatus.cancelled, caller=HOLDER)
    assert step.trial.state is TrialState.cancelled and step.action is Action.cancel


# -- retries and attempts --------------------------------------------------------------------------------

# event, retry, attempts so far, max_attempts -> state, worker id kept, failed for good
RETRIES: list[tuple[str, bool, int, int, str, str | None, bool]] = [
    ("fail", False, 1, 2, "failed", "w", True),  # not worth another attempt: failed at once
    ("fail", True, 1, 2, "pending", None, False),  # an attempt left
    ("fail", True, 2, 2, "failed", "w", True),  # none left
    ("fail", True, 1, 1, "failed", "w", True),
    ("expire", False, 1, 2, "pending", None, False),  # a lost worker is a crash: retried whatever `retry` says
    ("expire", True, 1, 2, "pending", None, False),
    ("expire", False, 2, 2, "failed", "w", True),
    ("expire", False, 1, 1, "failed", "w", True),
]


@pytest.mark.parametrize(("event", "retry", "attempts", "max_attempts", "state", "worker_id", "for_good"), RETRIES)
def test_a_failed_attempt_is_retried_only_while_attempts_remain(
        event: str, retry: bool, attempts: int, max_attempts: int, state: str, worker_id: str | None,
        for_good: bool) -> None:
    trial = TrialLife(TrialState.running, "w", 3, attempts)
    step = apply(trial, TrialEvent(event), sweep=SweepStatus.running, caller=_caller_for(TrialEvent(event)),
                 retry=retry, max_attempts=max_attempts)
    assert step.trial == TrialLife(TrialState(state), worker_id, 3, attempts, TrialEvent(event))
    assert step.failed_for_good is for_good and not step.succeeded


def test_a_claim_issues_the_next_token_and_counts_an_attempt() -> None:
    step = apply(TRIALS["pending"], TrialEvent.claim, sweep=SweepStatus.running, caller=Caller("x", 0))
    assert step.trial == TrialLife(TrialState.running, "x", 4, 1, None)


def test_the_first_claim_issues_token_1() -> None:
    step = apply(TrialLife(TrialState.pending), TrialEvent.claim, sweep=SweepStatus.running, caller=Caller("x", 0))
    assert step.trial == TrialLife(TrialState.running, "x", 1, 1, None)


@pytest.mark.parametrize("sweep", [SweepStatus.paused, SweepStatus.completed, SweepStatus.cancelled,
                                   SweepStatus.failed])
def test_only_a_running_sweeps_trials_can_be_claimed(sweep: SweepStatus) -> None:
    with pytest.raises(LeaseConflict, match=f"belongs to a {sweep.value} sweep"):
        apply(TRIALS["pending"], TrialEvent.claim, sweep=sweep, caller=Caller("x", 0))


def test_a_reclaim_issues_the_next_token_without_counting_an_attempt() -> None:
    step = apply(TRIALS["running"], TrialEvent.reclaim, sweep=SweepStatus.running, caller=HOLDER)
    assert step.trial == TrialLife(TrialState.running, "w", 4, 1, None)


def test_a_release_gives_the_attempt_back() -> None:
    step = apply(TrialLife(TrialState.running, "w", 3, 2), TrialEvent.release, sweep=SweepStatus.running,
                 caller=HOLDER, max_attempts=2)
    assert step.trial == TrialLife(TrialState.pending, None, 3, 1, TrialEvent.release)
    assert not step.failed_for_good and not step.succeeded


def test_only_a_completion_in_an_open_sweep_succeeds() -> None:
    for sweep in (SweepStatus.running, SweepStatus.paused):
        step = apply(TRIALS["running"], TrialEvent.complete, sweep=sweep, caller=HOLDER)
        assert step.succeeded and not step.failed_for_good
        assert step.trial == TrialLife(TrialState.completed, "w", 3, 1, TrialEvent.complete)
    for event in (TrialEvent.heartbeat, TrialEvent.report, TrialEvent.release, TrialEvent.reclaim, TrialEvent.prune):
        assert not apply(TRIALS["running"], event, sweep=SweepStatus.running, caller=_caller_for(event)).succeeded


@pytest.mark.parametrize("event", [*WORKER_CALLS, TrialEvent.claim, TrialEvent.reclaim])
def test_a_worker_event_without_its_caller_is_a_programming_error(event: TrialEvent) -> None:
    with pytest.raises(ValueError, match=event.value):
        apply(TRIALS["running"], event, sweep=SweepStatus.running)


# -- fencing and repeats ---------------------------------------------------------------------------------

STRANGERS = [
    pytest.param(Caller("w", 2), id="stale-token"),  # the same worker id, before it restarted and claimed again
    pytest.param(Caller("w", 4), id="unissued-token"),
    pytest.param(Caller("x", 3), id="other-worker"),
    pytest.param(Caller("x", 2), id="other-worker-stale-token"),
]


@pytest.mark.parametrize("caller", STRANGERS)
@pytest.mark.parametrize("event", WORKER_CALLS)
@pytest.mark.parametrize("sweep", [SweepStatus.running, SweepStatus.cancelled])
def test_only_the_current_tokens_holder_can_call_on_a_running_trial(
        sweep: SweepStatus, event: TrialEvent, caller: Caller) -> None:
    assert _outcome(TRIALS["running"], event, sweep=sweep, caller=caller)[0] == CONFLICT


def test_another_worker_cannot_reclaim_a_running_trial() -> None:
    assert _outcome(TRIALS["running"], TrialEvent.reclaim, caller=Caller("x", 3))[0] == CONFLICT


# Trials whose lease (worker "w", token 3) ended with a report, and the report that ended it.
ENDED_BY: dict[str, tuple[TrialLife, TrialEvent, Action]] = {
    "completed": (TrialLife(TrialState.completed, "w", 3, 1, TrialEvent.complete), TrialEvent.complete,
                  Action.continue_),
    "failed": (TrialLife(TrialState.failed, "w", 3, 1, TrialEvent.fail), TrialEvent.fail, Action.continue_),
    "failed-then-retried": (TrialLife(TrialState.pending, None, 3, 1, TrialEvent.fail), TrialEvent.fail,
                            Action.continue_),
    "released": (TrialLife(TrialState.pending, None, 3, 0, TrialEvent.release), TrialEvent.release,
                 Action.continue_),
    # An ended sweep's trial: whatever was reported, the answer to a repeat still says to stop.
    "completed-in-ended-sweep": (TrialLife(TrialState.cancelled, "w", 3, 1, TrialEvent.complete),
                                 TrialEvent.complete, Action.cancel),
    "released-in-ended-sweep": (TrialLife(TrialState.cancelled, "w", 3, 1, TrialEvent.release),
                                TrialEvent.release, Action.cancel),
}


@pytest.mark.parametrize("ended", ENDED_BY)
@pytest.mark.parametrize("sweep", [SweepStatus.running, SweepStatus.cancelled])
def test_a_lease_ending_report_sent_again_with_its_token_is_a_repeat_that_changes_nothing(
        ended: str, sweep: SweepStatus) -> None:
    trial, event, action = ENDED_BY[ended]
    step = apply(trial, event, sweep=sweep, caller=HOLDER, retry=True)
    assert step.repeated and step.trial == trial and step.action is action
    assert not step.succeeded and not step.failed_for_good  # the sweep counted it the first time


@pytest.mark.parametrize("token", [2, 4])
@pytest.mark.parametrize("ended", ENDED_BY)
def test_a_repeat_with_another_token_is_a_conflict(ended: str, token: int) -> None:
    trial, event, _ = ENDED_BY[ended]
    assert _outcome(trial, event, caller=Caller("w", token))[0] == CONFLICT


@pytest.mark.parametrize(("ended", "event"), [(ended, event) for ended, (_, ending, _) in ENDED_BY.items()
                                               for event in WORKER_CALLS if event is not ending])
def test_a_report_of_another_kind_after_the_lease_ended_is_a_conflict(ended: str, event: TrialEvent) -> None:
    trial, _, _ = ENDED_BY[ended]
    assert _outcome(trial, event, caller=HOLDER)[0] == CONFLICT


@pytest.mark.parametrize("event", LEASE_ENDINGS)
def test_a_stale_token_cannot_end_a_reclaimed_trial(event: TrialEvent) -> None:
    # The worker restarted and claimed again: the process before the restart is fenced off.
    reclaimed = apply(TRIALS["running"], TrialEvent.reclaim, sweep=SweepStatus.running, caller=HOLDER).trial
    assert _outcome(reclaimed, event, caller=HOLDER)[0] == CONFLICT
    assert _outcome(reclaimed, event, caller=Caller("w", reclaimed.lease_token))[0] != CONFLICT


@pytest.mark.parametrize("event", WORKER_CALLS)
def test_no_report_is_a_repeat_after_the_server_ended_the_lease(event: TrialEvent) -> None:
    ended = apply(TRIALS["running"], TrialEvent.expire, sweep=SweepStatus.running).trial
    assert _outcome(ended, event, caller=HOLDER)[0] == CONFLICT


@pytest.mark.parametrize("event", WORKER_CALLS)
def test_a_pruned_trial_takes_the_last_calls_of_its_holder_only(event: TrialEvent) -> None:
    pruned = apply(TRIALS["running"], TrialEvent.prune, sweep=SweepStatus.running).trial
    assert _outcome(pruned, event, caller=HOLDER)[0] != CONFLICT
    assert _outcome(pruned, event, caller=Caller("w", 2))[0] == CONFLICT  # an older lease of the same worker
    assert _outcome(pruned, event, caller=Caller("v", 3))[0] == CONFLICT
    if event in LEASE_ENDINGS:  # once wound up, the lease is over: only the same report again is accepted
        wound_up = apply(pruned, event, sweep=SweepStatus.running, caller=HOLDER).trial
        assert wound_up.state == TrialState.pruned
        assert _outcome(wound_up, TrialEvent.heartbeat, caller=HOLDER)[0] == CONFLICT
        assert _outcome(wound_up, event, caller=HOLDER)[0] == REPEATED


# -- the sweep -------------------------------------------------------------------------------------------

SWEEP_EVENTS = ("pause", "resume", "cancel", "fail", "finish", "extend")
# fmt: off
SWEEP_TABLE: dict[str, tuple[str, ...]] = {
    #             pause     resume    cancel       fail      finish       extend
    "running":   ("paused", CONFLICT, "cancelled", "failed", "completed", "running"),
    "paused":    (CONFLICT, "running", "cancelled", "failed", "completed", "paused"),  # paused with nothing left: done
    "completed": (CONFLICT, CONFLICT, CONFLICT,    CONFLICT, CONFLICT,    "running"),  # more trials: it runs again
    "cancelled": (CONFLICT, CONFLICT, CONFLICT,    CONFLICT, CONFLICT,    CONFLICT),
    "failed":    (CONFLICT, CONFLICT, CONFLICT,    CONFLICT, CONFLICT,    "running"),  # mended: it runs again
}
# fmt: on
ALLOWED_BEFORE: dict[str, set[str]] = {
    "pause": {"running"}, "resume": {"paused"}, "cancel": {"running", "paused"}, "fail": {"running", "paused"},
    "finish": {"running", "paused"}, "extend": {"running", "paused", "completed", "failed"},
}
DONE = {"pause": "paused", "resume": "resumed", "cancel": "cancelled", "fail": "failed", "finish": "completed",
        "extend": "extended"}


def test_the_sweep_table_covers_every_status_and_event() -> None:
    assert set(SWEEP_TABLE) == {status.value for status in SweepStatus}
    assert set(SWEEP_EVENTS) == {event.value for event in SweepEvent}


@pytest.mark.parametrize(("status", "event"), [(status, event) for status in SWEEP_TABLE for event in SWEEP_EVENTS])
def test_each_sweep_event_in_each_status_has_the_tabled_outcome(status: str, event: str) -> None:
    expected = SWEEP_TABLE[status][SWEEP_EVENTS.index(event)]
    if expected != CONFLICT:
        assert sweep_after(SweepStatus(status), SweepEvent(event)) is SweepStatus(expected)
        return
    with pytest.raises(SweepStateConflict) as conflict:
        sweep_after(SweepStatus(status), SweepEvent(event))
    # The message says why, naming the statuses that would have allowed it.
    found = re.fullmatch(rf"is {status}: only an? (?P<allowed>[a-z ]+) sweep can be {DONE[event]}",
                         str(conflict.value))
    assert found is not None, str(conflict.value)
    assert set(found["allowed"].split(" or ")) == ALLOWED_BEFORE[event]


# status, failures in a row (counting this one), max_failures -> status
FAILURE_LIMITS: list[tuple[str, int, int, str]] = [
    ("running", 2, 3, "running"),
    ("running", 3, 3, "failed"),
    ("running", 4, 3, "failed"),  # past the limit (max_failures lowered, say): fails all the same
    ("running", 1, 1, "failed"),
    ("paused", 2, 3, "paused"),
    ("paused", 3, 3, "failed"),
    ("completed", 3, 3, "completed"),  # an ended sweep stays as it ended
    ("cancelled", 3, 3, "cancelled"),
    ("cancelled", 9, 3, "cancelled"),
    ("failed", 4, 3, "failed"),
]


@pytest.mark.parametrize(("status", "failures", "max_failures", "after"), FAILURE_LIMITS)
def test_a_sweep_fails_once_failures_in_a_row_reach_its_limit(
        status: str, failures: int, max_failures: int, after: str) -> None:
    assert sweep_after_failure(SweepStatus(status), failures, max_failures) is SweepStatus(after)


@pytest.mark.parametrize(("completed", "pruned", "event"), [
    (3, 0, SweepEvent.finish), (1, 0, SweepEvent.finish),
    (0, 3, SweepEvent.finish),  # every trial pruned: each trained and was judged, so the search gave results
    (0, 0, SweepEvent.fail),  # every trial failed: nothing worked
])
def test_a_sweep_with_nothing_left_to_run_completes_only_when_some_trial_gave_a_result(
        completed: int, pruned: int, event: SweepEvent) -> None:
    assert sweep_end(completed, pruned) is event


# -- fencing under random interleavings ------------------------------------------------------------------

MAX_FAILURES = 2
ENDED_EARLY = (SweepStatus.cancelled, SweepStatus.failed)


@dataclass
class _Process:
    """A worker process: its worker id, and the token of its last claim of each trial it believes it holds (a
    process superseded by a restart or by a lost lease does not know it)."""

    worker_id: str
    believes: dict[int, int] = field(default_factory=dict)
    """Trial -> token, the latest claim last."""
    endings: list[tuple[int, TrialEvent, int, bool]] = field(default_factory=list)
    """Its accepted lease-ending reports (trial, event, token, retry), the latest last: a lost answer makes it send
    the latest again, and a request delayed on the way may arrive again much later."""


class Leases(RuleBasedStateMachine):
    """Trials of one sweep, claimed by processes as the server claims (api.storage), every change through `apply`.

    The model knows who the server gave each lease to (`holder`) and which report ended it (`repeatable`)
    without asking the lifecycle, and checks that `apply` accepts exactly the calls those allow.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trials: list[TrialLife] = []
        self.processes: list[_Process] = []
        self.sweep = SweepStatus.running
        self.max_attempts = 1
        self.consecutive_failures = 0
        self.holder: list[tuple[int, int] | None] = []
        """Per trial: (process, token) of the lease the server gave out and that has not ended."""
        self.repeatable: list[tuple[int, TrialEvent, int] | None] = []
        """Per trial: (process, event, token) of the report that ended its lease, while nothing changed it since."""
        self.winding_up: list[tuple[int, int] | None] = []
        """Per trial: (process, token) of the lease the server pruned, until its holder ends it."""
        self.issued: list[list[int]] = []
        self.claims_counted: list[int] = []
        self.completes: list[int] = []
        self.finished: dict[int, TrialLife] = {}

    @initialize(trials=st.integers(1, 3), processes=st.integers(2, 4), restarted=st.booleans(),
                max_attempts=st.integers(1, 3))
    def start(self, trials: int, processes: int, restarted: bool, max_attempts: int) -> None:
        self.trials = [TrialLife(TrialState.pending)] * trials
        worker_ids = [f"worker-{n}" for n in range(processes)]
        if restarted:  # a worker restarted: its new process runs under the old one's worker id
            worker_ids[1] = worker_ids[0]
        self.processes = [_Process(worker_id) for worker_id in worker_ids]
        self.max_attempts = max_attempts
        self.holder = [None] * trials
        self.repeatable = [None] * trials
        self.winding_up = [None] * trials
        self.issued = [[] for _ in range(trials)]
        self.claims_counted = [0] * trials
        self.completes = [0] * trials

    # -- the server ------------------------------------------------------------------------------------

    def _apply(self, index: int, event: TrialEvent, caller: Caller | None = None, retry: bool = False) -> Step:
        return apply(self.trials[index], event, sweep=self.sweep, caller=caller, retry=retry,
                     max_attempts=self.max_attempts)

    def _store(self, index: int, step: Step) -> None:
        """Write back a step that changed the trial, and count it for the sweep as the server does."""
        before, after = self.trials[index], step.trial
        assert step.succeeded == (after.state is TrialState.completed and before.state is not after.state)
        assert step.failed_for_good == (after.state is TrialState.failed and before.state is not after.state)
        self.trials[index] = after
        if step.succeeded:
            self.consecutive_failures = 0
        if step.failed_for_good:
            self.consecutive_failures += 1
            after_failure = sweep_after_failure(self.sweep, self.consecutive_failures, MAX_FAILURES)
            if after_failure is not self.sweep:
                self._end_sweep(after_failure)

    def _end_sweep(self, status: SweepStatus) -> None:
        # Its pending trials are cancelled now; its running ones at their holder's next call.
        self.sweep = status
        for index, trial in enumerate(self.trials):
            if trial.state is TrialState.pending:
                self._store(index, self._apply(index, TrialEvent.cancel))
                self.repeatable[index] = None

    def _lease_ended(self, index: int) -> None:
        self.holder[index] = None
        self.repeatable[index] = None

    def _issue(self, index: int, process: int) -> None:
        token = self.trials[index].lease_token
        assert token not in self.issued[index] and token > max(self.issued[index], default=0), \
            f"token {token} of trial {index} was issued before: {self.issued[index]}"
        self.issued[index].append(token)
        self.holder[index] = (process, token)
        self.repeatable[index] = None
        believes = self.processes[process].believes
        believes.pop(index, None)
        believes[index] = token

    @rule(process=st.integers(0, 3))
    def claim(self, process: int) -> None:
        # As the server claims: the running trial this worker id holds first (a restarted worker resumes it,
        # fenced anew), else the oldest pending trial of a running sweep.
        process %= len(self.processes)
        worker_id = self.processes[process].worker_id
        for index, trial in enumerate(self.trials):
            if trial.state is TrialState.running and trial.worker_id == worker_id:
                step = self._apply(index, TrialEvent.reclaim, Caller(worker_id, trial.lease_token))
                self._store(index, step)
                if step.trial.state is TrialState.running:
                    self._issue(index, process)
                    return
                self._lease_ended(index)  # its sweep ended while the worker was away: cancelled
        if self.sweep is not SweepStatus.running:
            return
        for index, trial in enumerate(self.trials):
            if trial.state is TrialState.pending:
                self._store(index, self._apply(index, TrialEvent.claim, Caller(worker_id, 0)))
                self.claims_counted[index] += 1
                self._issue(index, process)
                return

    @precondition(lambda self: any(trial.state is TrialState.running for trial in self.trials))
    @rule(pick=st.integers(0, 2), event=st.sampled_from([TrialEvent.expire, TrialEvent.prune]))
    def server_ends_a_lease(self, pick: int, event: TrialEvent) -> None:
        running = [index for index, trial in enumerate(self.trials) if trial.state is TrialState.running]
        index = running[pick % len(running)]
        self._store(index, self._apply(index, event))
        if event is TrialEvent.prune:  # its holder is told at its next call, and may still end its lease
            self.winding_up[index] = self.holder[index]
        self._lease_ended(index)

    # Cancelling is the rarer control, so that most runs see trials finish before their sweep ends.
    @precondition(lambda self: self.sweep in (SweepStatus.running, SweepStatus.paused))
    @rule(event=st.sampled_from([SweepEvent.pause, SweepEvent.resume] * 2 + [SweepEvent.cancel]))
    def control_the_sweep(self, event: SweepEvent) -> None:
        try:
            status = sweep_after(self.sweep, event)
        except SweepStateConflict:
            return
        if status in ENDED_EARLY:
            self._end_sweep(status)
        else:
            self.sweep = status

    # -- the workers -----------------------------------------------------------------------------------

    def _call(self, process: int, index: int, token: int, event: TrialEvent, retry: bool) -> None:
        worker = self.processes[process]
        trial = self.trials[index]
        if self.winding_up[index] == (process, token):
            self._wind_up(process, index, token, event, retry)
            return
        if self.holder[index] == (process, token):
            expected = "holder"
        elif event in LEASE_ENDINGS and self.repeatable[index] == (process, event, token):
            expected = REPEATED
        else:
            expected = CONFLICT
        try:
            step = self._apply(index, event, Caller(worker.worker_id, token), retry)
        except LeaseConflict:
            assert expected == CONFLICT, f"{worker.worker_id} token {token}: {event.value} refused on {trial}"
            return
        assert expected != CONFLICT, f"{worker.worker_id} token {token}: {event.value} accepted on {trial}"
        assert step.repeated == (expected == REPEATED)
        if step.repeated:
            assert step.trial == trial
            return
        self._store(index, step)
        if event not in LEASE_ENDINGS:
            assert step.trial == trial
            assert step.action is (Action.cancel if self.sweep in ENDED_EARLY else Action.continue_)
            return
        assert step.trial.state is not TrialState.running
        self._lease_ended(index)
        self.repeatable[index] = (process, event, token)
        # The process is done with the trial; should the answer be lost, it sends the same report again.
        del worker.believes[index]
        worker.endings.append((index, event, token, retry))
        if event is TrialEvent.release:
            self.claims_counted[index] -= 1
        if event is TrialEvent.complete:
            self.completes[index] += 1

    def _wind_up(self, process: int, index: int, token: int, event: TrialEvent, retry: bool) -> None:
        """A call from the holder of a pruned lease: told to prune again, or it ends the lease; the trial stays
        pruned either way, its attempts untouched."""
        worker = self.processes[process]
        trial = self.trials[index]
        step = self._apply(index, event, Caller(worker.worker_id, token), retry)
        assert step.trial.state is TrialState.pruned and step.trial.attempts == trial.attempts
        if event not in LEASE_ENDINGS:
            assert step.repeated and step.action is Action.prune and step.trial == trial
            return
        self.trials[index] = step.trial
        self.finished[index] = step.trial  # the lease ending is the last change it takes
        self.winding_up[index] = None
        self.repeatable[index] = (process, event, token)
        del worker.believes[index]
        worker.endings.append((index, event, token, retry))

    def _call_as_believed(self, process: int, pick: int, event: TrialEvent, retry: bool) -> None:
        """A call on a trial the process believes it holds: its latest claim, unless `pick` goes further back."""
        believers = [number for number, worker in enumerate(self.processes) if worker.believes]
        process = believers[process % len(believers)]
        believes = self.processes[process].believes
        index = list(reversed(believes))[pick % len(believes)]
        self._call(process, index, believes[index], event, retry)

    # Two rules, so that the workers' calls are as frequent as the server's events.
    @precondition(lambda self: any(process.believes for process in self.processes))
    @rule(process=st.integers(0, 3), pick=st.integers(0, 2),
          event=st.sampled_from([TrialEvent.heartbeat, TrialEvent.report]))
    def keep_a_lease_it_believes_it_holds(self, process: int, pick: int, event: TrialEvent) -> None:
        self._call_as_believed(process, pick, event, retry=False)

    @precondition(lambda self: any(process.believes for process in self.processes))
    @rule(process=st.integers(0, 3), pick=st.integers(0, 2), event=st.sampled_from(LEASE_ENDINGS),
          retry=st.booleans())
    def end_a_lease_it_believes_it_holds(self, process: int, pick: int, event: TrialEvent, retry: bool) -> None:
        self._call_as_believed(process, pick, event, retry)

    @precondition(lambda self: any(process.endings for process in self.processes))
    @rule(process=st.integers(0, 3), pick=st.integers(0, 2))
    def repeat_a_lease_ending_report(self, process: int, pick: int) -> None:
        # Its latest, unless `pick` goes further back.
        senders = [number for number, worker in enumerate(self.processes) if worker.endings]
        process = senders[process % len(senders)]
        endings = self.processes[process].endings
        index, event, token, retry = endings[-1 - pick % len(endings)]
        self._call(process, index, token, event, retry)

    @precondition(lambda self: any(trial.state is TrialState.running for trial in self.trials))
    @rule(process=st.integers(0, 3), pick=st.integers(0, 2), event=st.sampled_from(WORKER_CALLS))
    def another_worker_guesses_the_current_token(self, process: int, pick: int, event: TrialEvent) -> None:
        # Tokens are small numbers: the worker id is part of the fence, so a guess under another id gets nowhere.
        running = [index for index, trial in enumerate(self.trials) if trial.state is TrialState.running]
        index = running[pick % len(running)]
        trial = self.trials[index]
        others = [worker for worker in self.processes if worker.worker_id != trial.worker_id]
        if not others:
            return
        guesser = others[process % len(others)]
        try:
            self._apply(index, event, Caller(guesser.worker_id, trial.lease_token), retry=True)
        except LeaseConflict:
            return
        raise AssertionError(f"{guesser.worker_id} took a {event.value} on trial {index}, leased to {trial.worker_id}")

    # -- invariants ------------------------------------------------------------------------------------

    @invariant()
    def at_most_one_process_can_act_as_a_trials_holder(self) -> None:
        for index, trial in enumerate(self.trials):
            able = []
            for number, worker in enumerate(self.processes):
                if index not in worker.believes:
                    continue
                try:
                    apply(trial, TrialEvent.heartbeat, sweep=self.sweep,
                          caller=Caller(worker.worker_id, worker.believes[index]))
                except LeaseConflict:
                    continue
                able.append(number)
            holder = self.holder[index]
            winding_up = self.winding_up[index]
            if trial.state is TrialState.running:
                assert holder is not None and able == [holder[0]], f"trial {index}: {able} can act, holder {holder}"
            elif winding_up is not None:  # pruned: its last holder alone may still call, to be told so
                assert holder is None and able == [winding_up[0]], f"trial {index}: {able} can call, pruned"
            else:
                assert holder is None and able == [], f"trial {index} is {trial.state.value}, yet {able} can act"

    @invariant()
    def a_trials_tokens_only_grow_and_each_went_to_one_process(self) -> None:
        for index, trial in enumerate(self.trials):
            assert trial.lease_token == (self.issued[index][-1] if self.issued[index] else 0)
            tokens = [worker.believes[index] for worker in self.processes if index in worker.believes]
            assert len(tokens) == len(set(tokens)), f"trial {index}: one token given to two processes: {tokens}"

    @invariant()
    def a_worker_id_holds_at_most_one_running_trial(self) -> None:
        held = [trial.worker_id for trial in self.trials if trial.state is TrialState.running]
        assert len(held) == len(set(held)), held

    @invariant()
    def each_trial_is_consistent_with_its_state(self) -> None:
        for index, trial in enumerate(self.trials):
            if trial.state is TrialState.running:
                assert trial.worker_id is not None and trial.lease_end is None
            if trial.state is TrialState.pending:
                assert trial.worker_id is None
            # A claim counts an attempt, a release gives it back, nothing else touches them.
            assert trial.attempts == self.claims_counted[index]
            assert 0 <= trial.attempts <= self.max_attempts
            if trial.state is TrialState.pending:
                assert trial.attempts < self.max_attempts, "a pending trial with no attempt left"

    @invariant()
    def a_completed_trial_was_completed_exactly_once(self) -> None:
        for index, trial in enumerate(self.trials):
            assert self.completes[index] <= 1
            if trial.state is TrialState.completed:
                assert self.completes[index] == 1

    @invariant()
    def a_finished_trial_never_changes(self) -> None:
        for index, trial in enumerate(self.trials):
            if index in self.finished:
                assert trial == self.finished[index]
            elif trial.state.finished:
                self.finished[index] = trial

    @invariant()
    def an_ended_sweep_has_no_pending_trial(self) -> None:
        if self.sweep in ENDED_EARLY:
            assert all(trial.state is not TrialState.pending for trial in self.trials)


Leases.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None, derandomize=True,
                                    database=None)
TestAtMostOneProcessHoldsALeaseUnderAnyInterleaving = Leases.TestCase

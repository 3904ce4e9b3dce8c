"""One trial's lease as a worker holds it: the heartbeat thread that extends it, and what the heartbeat
and the epoch callback learn about the trial, shared between them.

Whatever they learn reaches the training loop within one heartbeat interval, through the answer to the
next batch (`TrialControl.interrupt`) or epoch (`TrialControl.answer`). An exploit (Population Based
Training) is the answer to one epoch's report only, and is passed on with it. A refused call (409: a newer
claim holds the trial; 404: the trial is gone) makes both raise `TrialAbandonedError`, so the runner
stops at once and writes nothing more.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sweeper import TrialAbandonedError
from sweeper.client import ApiError, Client, LeaseLostError, NotFoundError, ServerUnavailableError
from sweeper.messages import Action, Directive, HeartbeatRequest

__all__ = ["Heartbeat", "TrialControl"]

logger = logging.getLogger(__name__)


class TrialControl:
    """What the heartbeat thread and the epoch callback learned about one trial, shared between them."""

    def __init__(self, trial_id: int) -> None:
        self._trial_id = trial_id
        self._lock = threading.Lock()
        self.server_action = Action.continue_
        self.lease_lost: ApiError | None = None
        self.unreachable: ServerUnavailableError | None = None
        self._hand_back_now = False

    def server_says(self, action: Action) -> None:
        if action is Action.exploit:
            return  # about one epoch only: `answer` passes it on with that epoch's answer
        with self._lock:
            # stop, prune and cancel are final: a later continue must not undo them, and a cancel (the
            # sweep is over) outranks the others.
            if self.server_action is Action.continue_ or action is Action.cancel:
                self.server_action = action

    def lose_lease(self, error: ApiError) -> None:
        with self._lock:
            self.lease_lost = self.lease_lost or error

    def action(self, leaving: bool) -> Action:
        """The answer to an epoch's end: what the server said, or stop when this worker is leaving (shut
        down, orphaned) or cannot reach the server. TrialAbandonedError once the trial is another's."""
        with self._lock:
            self._require_lease()
            if self.server_action is Action.cancel:
                return Action.cancel
            if self.unreachable is not None or leaving:
                return Action.stop
            return self.server_action

    def answer(self, reply: Directive | None, leaving: bool) -> Directive:
        """The runner's answer to an epoch's end, given the server's `reply` to its report (None when there
        was none): `action`'s, or the reply's exploit.

        An exploit is carried out even when the trial is to stop (this worker is leaving, or the server said
        stop): the runner loads the donor's weights and saves them as the epoch's checkpoint, and
        `interrupt` then answers stop. Stopping without it would leave the member's own weights in that
        checkpoint, which the retry would resume the new segment from.
        """
        action = self.action(leaving)
        if reply is None or reply.exploit is None or action not in (Action.continue_, Action.stop):
            return Directive(action=action)
        if action is Action.stop:
            with self._lock:
                self._hand_back_now = True
        return Directive(action=Action.exploit, exploit=reply.exploit)

    def interrupt(self, orphaned: bool) -> Action | None:
        """The answer after each batch: cancel at once when the sweep is over, stop at once when the
        supervisor is gone or an exploit was answered to a trial that is to stop (see `answer`).
        TrialAbandonedError once the trial is another's."""
        with self._lock:
            self._require_lease()
            if self.server_action is Action.cancel:
                return Action.cancel
            return Action.stop if orphaned or self._hand_back_now else None

    def _require_lease(self) -> None:
        if self.lease_lost is not None:
            raise TrialAbandonedError(f"trial {self._trial_id} is no longer this worker's: {self.lease_lost}")


class Heartbeat:
    """A thread that extends the trial's lease every `interval` seconds while the trial trains.

    Each tick first calls `on_tick` (which notices a dead supervisor), so whatever the heartbeat
    learns, or that, reaches the training loop within one interval.
    """

    def __init__(self, client: Client, trial_id: int, request: HeartbeatRequest, interval: float,
                 control: TrialControl, on_tick: Callable[[], object]):
        self._client, self._trial_id, self._request = client, trial_id, request
        self._interval, self._control, self._on_tick = interval, control, on_tick
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        # A beat stuck in the client's retries must not hold up reporting the result; what it brings
        # back after this point is ignored.
        self._thread.join(timeout=2.0)

    def _beat(self) -> None:
        while not self._done.wait(self._interval):
            self._on_tick()
            try:
                directive = self._client.heartbeat(self._trial_id, self._request)
            except (LeaseLostError, NotFoundError) as error:
                if not self._done.is_set():
                    logger.warning("heartbeat for trial %d refused: %s", self._trial_id, error)
                    self._control.lose_lease(error)
                return
            except ApiError as error:
                # The lease outlives a few missed beats; the epoch callback decides when to give up.
                logger.warning("heartbeat for trial %d failed: %s", self._trial_id, error)
                continue
            except Exception:
                logger.exception("heartbeat for trial %d failed unexpectedly", self._trial_id)
                continue
            if not self._done.is_set():
                self._control.server_says(directive.action)
                if directive.action is not Action.continue_:
                    logger.info("server asks trial %d to %s", self._trial_id, directive.action.value)

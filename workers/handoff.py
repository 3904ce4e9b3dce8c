"""What the supervisor and the agents it starts agree on: exit codes, environment, the state file, and
when a trial's checkpoint is deleted.

The supervisor learns what became of a child only from its exit status and from the state file the
child keeps while it trains; both sides import this module, so neither can drift from the other.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from sweeper.messages import LeaseToken, TrialState, WorkerId
from sweeper.training.checkpoints import TrialCheckpoint
from sweeper.training.devices import CPU_DEVICES_VARIABLE, MEMORY_LIMIT_VARIABLE

__all__ = ["CPU_DEVICES_VARIABLE", "EXIT_SERVER_UNREACHABLE", "EXIT_WORKER_ID_IN_USE", "MEMORY_LIMIT_VARIABLE",
           "TOKEN_VARIABLE", "RunningTrial", "StateFile", "delete_checkpoint_if_finished", "ended_for_good"]

EXIT_SERVER_UNREACHABLE = 75
"""The server stayed unreachable through every retry (BSD's EX_TEMPFAIL): the supervisor restarts such a
worker without counting it as a crash, so workers outlast a server outage."""

EXIT_WORKER_ID_IN_USE = 78
"""Another live process uses this worker's id (BSD's EX_CONFIG: two workers were given one id). Every
claim either made would take the other's trial away, so the supervisor does not restart it."""

TOKEN_VARIABLE = "SWEEPER_TOKEN"
"""The server's worker token, passed in the environment: a command line shows in `ps`."""


class RunningTrial(BaseModel):
    """What a child records about the trial it trains, for its supervisor to report if the child dies."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    trial_id: int
    trial_name: str = ""
    """How logs name the trial (Assignment.trial_name: sweep, number and id); empty in an older child's file."""
    worker_id: WorkerId
    lease_token: LeaseToken
    """The claim's token: a report with it is refused once a newer claim holds the trial."""
    checkpoint_dir: str
    """The trial's checkpoint root, which the supervisor deletes once the trial is finished for good."""

    @property
    def name(self) -> str:
        return self.trial_name or f"trial {self.trial_id}"


class StateFile:
    """The file in which a child records its running trial; the supervisor reads it when the child dies."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def write(self, trial: RunningTrial) -> None:
        partial = self.path.with_name(self.path.name + ".tmp")
        partial.write_text(trial.model_dump_json())
        os.replace(partial, self.path)  # atomic: the supervisor never reads half a file

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def read(self) -> RunningTrial | None:
        """The recorded trial; None when there is none, or the file is not one (a child killed mid-write
        leaves only its `.tmp`, never half of this file)."""
        try:
            return RunningTrial.model_validate_json(self.path.read_bytes())
        except (OSError, ValidationError):
            return None


def ended_for_good(answer: object) -> bool:
    """Whether the server's answer to a report (the trial, as JSON) shows it finished: completed, failed,
    pruned or cancelled, so no attempt will ever resume it."""
    state = answer.get("state") if isinstance(answer, dict) else None
    return state in {member.value for member in TrialState} and TrialState(state).finished


def delete_checkpoint_if_finished(answer: object, checkpoint_dir: str | None) -> bool:
    """Delete the trial's checkpoint root when `answer` (the server's to a complete, fail or release) shows
    the trial finished for good; True when it did.

    The one place that decides it, for the agent after its own reports and for the supervisor after
    reporting a dead child's trial: a trial that may still be retried keeps its checkpoint to resume from.
    """
    if not checkpoint_dir or not ended_for_good(answer):
        return False
    TrialCheckpoint(checkpoint_dir).delete()
    return True

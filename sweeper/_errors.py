"""The core's exceptions: one root, so callers can catch everything sweeper raises on purpose."""

from __future__ import annotations

from collections.abc import Sequence


class SweeperError(Exception):
    """Root of every error sweeper raises deliberately."""


class SpecError(SweeperError):
    """A sweep spec broke a rule; each problem names its field path and the rule.

    `line_numbers`, where known (a YAML file's), say on which line of the source each problem's field was
    written, in the order of `problems`.
    """

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]], source: str | None = None,
                 line_numbers: Sequence[int | None] | None = None):
        self.problems = problems
        self.source = source
        self.line_numbers: list[int | None] = list(line_numbers or [None] * len(problems))
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "; ".join(self.messages))

    @property
    def messages(self) -> list[str]:
        return [f"{_dotted(path)}: {message}" if path else message for path, message in self.problems]

    @property
    def lines(self) -> list[str]:
        """Each problem as a line of its own, `source:line: field: rule` (as much as is known), in the
        source's order: what a compiler would print."""
        located = sorted(zip(self.line_numbers, self.messages), key=lambda item: item[0] or 0)
        return [f"{self.source}{'' if line is None else f':{line}'}: {message}" if self.source else message
                for line, message in located]


class UnknownTrialError(SweeperError):
    """A trial id that the server does not know."""


class RetryableError(SweeperError):
    """Raised by model or data code for a failure that another attempt may not meet (a flaky file
    system, a busy data service): the trial is tried again, from its checkpoint, while attempts remain.

    Any other exception fails the trial for good: the same code on the same configuration would fail again.
    """


class InfrastructureError(RetryableError):
    """Writing or reading a trial's checkpoint or logs failed (a full disk, an object store away): not the
    configuration's fault, so the trial is handed back and tried again, never failed as a model error."""


class TrialAbandonedError(SweeperError):
    """The trial is no longer this process's to train (its lease was taken over, or the trial is gone).

    Raised out of a trial's epoch callback or interrupt: training ends at once and nothing more is
    written to the trial's logs or checkpoint, since another process may be writing them now.
    """


class NonFiniteLossError(SweeperError):
    """The training loss became NaN or infinite: the configuration diverged, and would again if retried."""


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in path)

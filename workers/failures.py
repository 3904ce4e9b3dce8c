"""What an exception from a trial means to the server: its kind, a one-line error, and whether to retry.

Only `RetryableError` is retried: any other exception in model or data code would recur on the same
configuration. An `InfrastructureError` (writing the trial's checkpoint or logs failed) is retried as
kind io: the disk or the object store is at fault, not the model. A loss that became NaN
(`NonFiniteLossError`) and running out of memory are kinds of their own, so the dashboard and the
sweep's failure budget can tell them from bugs. Out-of-memory is recognized without importing
TensorFlow: by the class name of `tf.errors.ResourceExhaustedError` and by the messages TensorFlow and
CUDA use ("OOM ...", "... out of memory").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from sweeper import InfrastructureError, NonFiniteLossError, RetryableError
from sweeper.messages import FailReport, FailureKind

__all__ = ["clip", "failure_kind", "failure_report", "one_line"]

_MAX_ERROR_CHARS = 4_000  # a one-line summary; the traceback carries the rest
_MAX_TRACEBACK_CHARS = 250_000  # FailReport.traceback allows 262,144; keep room for the truncation note
_OOM_CLASSES = frozenset({"ResourceExhaustedError", "OutOfMemoryError", "MemoryError"})
_OOM_MESSAGE = re.compile(r"\bOOM\b|out of memory", re.IGNORECASE)


def failure_kind(error: BaseException) -> FailureKind:
    """error, nan, oom or io (a crash is the supervisor's finding: the process is gone by then)."""
    if isinstance(error, InfrastructureError):
        return FailureKind.io
    if isinstance(error, NonFiniteLossError):
        return FailureKind.nan
    if any(_is_out_of_memory(link) for link in _chain(error)):
        return FailureKind.oom
    return FailureKind.error


def failure_report(worker_id: str, lease_token: int, error: BaseException, trace: str,
                   hparams: Mapping[str, Any]) -> FailReport:
    """The report, under the claim's `lease_token`, of a trial that raised `error` (with its formatted
    traceback `trace`)."""
    if isinstance(error, RetryableError):
        # The code said another attempt may succeed, whatever the message looks like.
        kind = FailureKind.io if isinstance(error, InfrastructureError) else FailureKind.error
        return FailReport(worker_id=worker_id, lease_token=lease_token, error=clip(one_line(error), _MAX_ERROR_CHARS),
                          retryable=True, kind=kind, traceback=clip(trace, _MAX_TRACEBACK_CHARS))
    kind = failure_kind(error)
    if kind is FailureKind.oom:
        # The configuration is what to change: name it, rather than the allocator's tensor shapes.
        configuration = json.dumps(dict(hparams), sort_keys=True, default=str)
        summary = f"out of memory with hparams {configuration} ({one_line(error)})"
    elif kind is FailureKind.nan:
        # Sweeper's own message says it all ("loss became NaN at epoch 3 (batch 12)"); no class name.
        summary = str(error).strip().splitlines()[0]
    else:
        summary = one_line(error)
    return FailReport(worker_id=worker_id, lease_token=lease_token, error=clip(summary, _MAX_ERROR_CHARS),
                      retryable=False, kind=kind, traceback=clip(trace, _MAX_TRACEBACK_CHARS))


def one_line(error: BaseException) -> str:
    """`Type: first line of the message`, e.g. "ValueError: exploding gradients"."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def clip(text: str, limit: int) -> str:
    """`text` within `limit` characters; a long traceback keeps its end, where the exception is."""
    if len(text) <= limit:
        return text
    note = f"[... {len(text) - limit} characters cut ...]\n"
    return note + text[-(limit - len(note)):]


def _chain(error: BaseException) -> Iterator[BaseException]:
    # Model code may wrap TensorFlow's error in its own ("raise MyError(...) from error").
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _is_out_of_memory(error: BaseException) -> bool:
    if any(cls.__name__ in _OOM_CLASSES for cls in type(error).__mro__):
        return True
    return bool(_OOM_MESSAGE.search(str(error)))

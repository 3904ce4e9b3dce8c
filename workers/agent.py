"""The worker agent: one process that claims trials from the server and trains them one at a time.

Run by the supervisor, one per GPU, with the environment already pinning it to its GPU (and, when
several share one, capping its memory); the agent only applies that. TensorFlow is imported on the
first trial and kept for the next.

A trial ends in one report. Completed or pruned: `complete` with its metrics. An exception: `fail`,
with its kind (error, nan or oom), a one-line error, the traceback, and retryable only for a
`RetryableError` (see workers.failures); out of memory leaves the process able to run the next
trial, since the runner clears the Keras session. Cancelled (the server answers "cancel" to a
heartbeat or an epoch report): training stops after the current batch and the trial is failed as
"cancelled". Stopped ("stop" from the server, or this worker shutting down): it stops at the end of
the epoch, whose checkpoint the next attempt resumes from, and is released: pending again, no attempt
counted. Heartbeats extend the lease every `heartbeat_seconds` of the assignment meanwhile.

Shutdown: the first SIGTERM (or SIGINT) finishes the current epoch, releases the trial and exits 0;
the second ends the process at once, by that signal: its lease (or the supervisor, which reads the
trial from the state file) puts the trial back in the queue.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sweeper._errors import SweeperError
from sweeper.client import ApiError, Client, LeaseLostError, NotFoundError, ServerUnavailableError
from sweeper.messages import (Assignment, ClaimRequest, CompleteReport, FailReport, FailureKind, MetricsReport,
                              ReleaseReport, TrialState)
from sweeper.training.checkpoints import TrialCheckpoint, checkpoint_folder
from workers.failures import clip, failure_report

if TYPE_CHECKING:
    from sweeper.training.runner import TrialResult

    Trainer = Callable[..., TrialResult]
    """Called as `trainer(assignment, on_epoch_end, interrupt=...)`, like `runner.run_trial`."""

__all__ = ["EXIT_SERVER_UNREACHABLE", "Agent", "FatalWorkerError", "ended_for_good", "main", "release_or_fail"]

# Named, not __name__: run as `python -m workers.agent` the module is __main__.
logger = logging.getLogger("workers.agent")

EXIT_SERVER_UNREACHABLE = 75
"""Exit status (BSD's EX_TEMPFAIL) when the server stayed unreachable through every retry: the
supervisor restarts such a worker without counting it as a crash, so workers outlast a server outage."""

_MAX_REASON_CHARS = 60_000  # ReleaseReport.reason allows 65,536
_MIN_HEARTBEAT_SECONDS = 0.05  # whatever an assignment says, never a busy loop against the server


class FatalWorkerError(SweeperError):
    """This worker cannot run any trial (the trainer does not load); it exits so a human can look."""


class _TrialControl:
    """What the heartbeat thread and the epoch callback learned about one trial, shared between them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.server_action = "continue"
        self.lease_lost: ApiError | None = None
        self.unreachable: ServerUnavailableError | None = None

    def server_says(self, action: str) -> None:
        with self._lock:
            # "stop", "prune" and "cancel" are final: a later "continue" must not undo them, and a
            # "cancel" (the sweep is over) outranks the others.
            if self.server_action == "continue" or action == "cancel":
                self.server_action = action

    def lose_lease(self, error: ApiError) -> None:
        with self._lock:
            self.lease_lost = self.lease_lost or error

    def action(self, draining: bool) -> str:
        """The answer to an epoch's end: what the server said, or "stop" when the trial must be left."""
        with self._lock:
            if self.server_action == "cancel":
                return "cancel"
            if self.lease_lost is not None or self.unreachable is not None or draining:
                return "stop"
            return self.server_action

    def interrupt(self) -> str | None:
        """The answer after each batch: stop at once when the sweep is cancelled or the trial is another's."""
        with self._lock:
            if self.server_action == "cancel":
                return "cancel"
            if self.lease_lost is not None:
                return "stop"
            return None


class _Heartbeat:
    """A thread that extends the trial's lease every `interval` seconds while the trial trains."""

    def __init__(self, client: Client, trial_id: int, worker_id: str, interval: float, control: _TrialControl):
        self._client, self._trial_id, self._worker_id = client, trial_id, worker_id
        self._interval, self._control = interval, control
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        # A beat stuck in the client's retries must not hold up reporting the result; what it brings
        # back after this point is ignored.
        self._thread.join(timeout=2.0)

    def _beat(self) -> None:
        while not self._done.wait(self._interval):
            try:
                directive = self._client.heartbeat(self._trial_id, self._worker_id)
            except (LeaseLostError, NotFoundError) as error:
                if not self._done.is_set():
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
                if directive.action != "continue":
                    logger.info("server asks trial %d to %s", self._trial_id, directive.action)


class Agent:
    """Claims trials and trains them, one at a time, until idle for `idle_exit` seconds or shut down."""

    def __init__(self, client: Client, worker_id: str, host: str, gpu: str | None = None, poll_interval: float = 1.0,
                 heartbeat_interval: float | None = None, idle_exit: float | None = None,
                 state_file: str | Path | None = None, parent_pid: int | None = None,
                 run_trial: Trainer | None = None, data_root: Path | None = None):
        if poll_interval <= 0 or (heartbeat_interval is not None and heartbeat_interval <= 0):
            raise ValueError(f"intervals must be > 0, but got {poll_interval=}, {heartbeat_interval=}")
        self.client = client
        self.worker_id = worker_id
        self.host = host
        self.gpu = gpu
        self.poll_interval = poll_interval
        # None: every `heartbeat_seconds` the server puts in the assignment; a number overrides it.
        self.heartbeat_interval = heartbeat_interval
        self.idle_exit = idle_exit
        # The supervisor reads this file when the process dies, to report the trial it was running.
        self.state_file = Path(state_file) if state_file is not None else None
        # Set when supervised: if the supervisor dies, finish the current trial and exit, not run on orphaned.
        self.parent_pid = parent_pid
        # The trainer; by default sweeper's Keras runner, imported (with TensorFlow) on the first trial.
        self._run_trial_fn = run_trial
        # Where file datasets (npz:..., images:...) are read from; the operator's choice, never a request's.
        self.data_root = data_root
        self.trials_run = 0
        self._draining = threading.Event()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def shutdown(self) -> None:
        """Finish the current epoch, release the trial (its checkpoint has that epoch), then exit.

        An idle agent exits at once. Stopping sooner than an epoch's end is the process's business: a
        second signal ends it (see `main`), and its supervisor releases the trial, or its lease runs out.
        """
        self._draining.set()

    def run(self) -> None:
        """Claim and train until idle for `idle_exit` seconds or shut down; raises on a fatal error."""
        logger.info("worker %s on %s (GPU %s) asking %s for trials", self.worker_id, self.host,
                    self.gpu if self.gpu is not None else "none", self.client.base_url)
        request = ClaimRequest(worker_id=self.worker_id, host=self.host, gpu=self.gpu)
        idle_since = time.monotonic()
        while not self._should_exit():
            assignment = self.client.claim(request)
            if assignment is None:
                idle = time.monotonic() - idle_since
                if self.idle_exit is not None and idle >= self.idle_exit:
                    logger.info("no work for %.1fs (idle exit after %ss); exiting", idle, self.idle_exit)
                    return
                self._draining.wait(self.poll_interval)
                continue
            if self._draining.is_set():
                # Shut down while the claim was in flight: hand the trial straight back.
                self._release(assignment, f"worker {self.worker_id} shut down before starting it")
                break
            self._run_trial(assignment)
            idle_since = time.monotonic()
        logger.info("worker %s exiting after %d trial(s)", self.worker_id, self.trials_run)

    # -- one trial ---------------------------------------------------------------------------------

    def _run_trial(self, assignment: Assignment) -> None:
        trial_id = assignment.trial_id
        logger.info("claimed trial %d of sweep %d (%s on %s, attempt %d): %s", trial_id, assignment.sweep_id,
                    assignment.model, assignment.dataset, assignment.attempt, assignment.hparams)
        self._record_current(assignment)
        try:
            self._train_and_report(assignment)
        finally:
            self._record_current(None)
        if self.trials_run == 0:
            _freeze_long_lived_objects()
        self.trials_run += 1

    def _train_and_report(self, assignment: Assignment) -> None:
        trial_id = assignment.trial_id
        control = _TrialControl()
        on_epoch_end = functools.partial(self._on_epoch_end, assignment, control)
        interval = self.heartbeat_interval if self.heartbeat_interval is not None else assignment.heartbeat_seconds
        interval = max(interval, _MIN_HEARTBEAT_SECONDS)
        failure: Exception | None = None
        trace = ""
        with _Heartbeat(self.client, trial_id, self.worker_id, interval, control):
            try:
                train = self._trainer()
            except Exception as error:
                self._release(assignment, f"worker {self.worker_id} cannot load the trainer:\n"
                                          f"{traceback.format_exc()}")
                raise FatalWorkerError(f"cannot load the trainer: {type(error).__name__}: {error}") from error
            started = time.monotonic()
            try:
                result = train(assignment, on_epoch_end, interrupt=control.interrupt)
            except Exception as error:
                failure, trace = error, traceback.format_exc()
        elapsed = time.monotonic() - started

        if control.lease_lost is not None:
            logger.warning("dropping trial %d: %s", trial_id, control.lease_lost)
            return
        if control.unreachable is not None:
            # Not the trial's fault: leave it to the server's lease expiry and let the supervisor restart us.
            raise control.unreachable
        if failure is not None:
            self._report_failure(assignment, failure, trace, elapsed)
            return
        if result.stopped_by == "stop":
            why = "shut down" if self.draining else "was asked by the server to stop it"
            self._release(assignment, f"worker {self.worker_id} {why} after {result.epochs_run} epoch(s)",
                          epochs_done=result.epochs_run)
            return
        if result.stopped_by == "cancel":
            logger.info("trial %d cancelled after %d epoch(s) in %.1fs", trial_id, result.epochs_run, elapsed)
            self._send(trial_id, lambda: self.client.fail(trial_id, FailReport(
                worker_id=self.worker_id, error="cancelled", retryable=False, kind=FailureKind.error)))
            return
        logger.info("trial %d finished: %d epoch(s) in %.1fs%s, metrics %s", trial_id, result.epochs_run, elapsed,
                    f" (stopped early: {result.stopped_by})" if result.stopped else "", _short(result.metrics))
        self._send(trial_id, lambda: self.client.complete(
            trial_id, CompleteReport(worker_id=self.worker_id, metrics=_floats(result.metrics))))

    def _report_failure(self, assignment: Assignment, error: Exception, trace: str, elapsed: float) -> None:
        trial_id = assignment.trial_id
        report = failure_report(self.worker_id, error, trace, assignment.hparams)
        logger.error("trial %d failed after %.1fs (%s%s): %s\n%s", trial_id, elapsed, report.kind.value,
                     ", retryable" if report.retryable else "", report.error, trace.rstrip())
        if report.kind is FailureKind.oom:
            # The runner cleared the Keras session; collecting now frees what the failed trial still held,
            # so the next trial, likely a smaller one, gets the memory back.
            gc.collect()
        answer = self._send(trial_id, lambda: self.client.fail(trial_id, report))
        if report.retryable and ended_for_good(answer):
            # No attempts left: the checkpoint kept for a retry will never be used.
            TrialCheckpoint(checkpoint_folder(assignment)).delete()

    def _on_epoch_end(self, assignment: Assignment, control: _TrialControl, epoch: int,
                      metrics: dict[str, float]) -> str:
        """Post the epoch's metrics; the answer tells the runner to continue, stop, prune or cancel."""
        if control.lease_lost is None and control.unreachable is None:
            report = MetricsReport(worker_id=self.worker_id, epoch=epoch, metrics=_floats(metrics))
            try:
                control.server_says(self.client.report_metrics(assignment.trial_id, report).action)
            except (LeaseLostError, NotFoundError) as error:
                control.lose_lease(error)
            except ServerUnavailableError as error:
                logger.error("cannot report epoch %d of trial %d: %s", epoch, assignment.trial_id, error)
                control.unreachable = error
            except ApiError as error:
                # A rejected report (a bad metric name, say) costs one point of history, not the trial.
                logger.warning("server rejected epoch %d of trial %d: %s", epoch, assignment.trial_id, error)
        return control.action(draining=self._draining.is_set())

    def _trainer(self) -> Trainer:
        if self._run_trial_fn is None:
            # Imported here, not at module level: the agent answers --help and idles without TensorFlow.
            from sweeper.training import devices, runner
            devices.configure_gpus(devices.memory_limit_from_environment())
            self._run_trial_fn = functools.partial(runner.run_trial, data_root=self.data_root)
        return self._run_trial_fn

    # -- reporting ---------------------------------------------------------------------------------

    def _release(self, assignment: Assignment, reason: str, epochs_done: int = 0) -> None:
        """Give the trial back unfinished: pending again for any worker, no attempt counted."""
        logger.warning("releasing trial %d: %s", assignment.trial_id, reason.splitlines()[0])
        report = ReleaseReport(worker_id=self.worker_id, reason=clip(reason, _MAX_REASON_CHARS),
                               epochs_done=epochs_done)
        self._send(assignment.trial_id, lambda: release_or_fail(self.client, assignment.trial_id, report))

    def _send(self, trial_id: int, call: Callable[[], object]) -> object:
        try:
            return call()
        except (LeaseLostError, NotFoundError) as error:
            logger.warning("dropping trial %d: %s", trial_id, error)
            return None

    def _record_current(self, assignment: Assignment | None) -> None:
        if self.state_file is None:
            return
        if assignment is None:
            self.state_file.unlink(missing_ok=True)
            return
        partial = self.state_file.with_name(self.state_file.name + ".tmp")
        partial.write_text(json.dumps({"trial_id": assignment.trial_id, "worker_id": self.worker_id,
                                       "checkpoint_dir": str(checkpoint_folder(assignment))}))
        os.replace(partial, self.state_file)  # atomic: the supervisor never reads half a file

    def _should_exit(self) -> bool:
        if self.parent_pid is not None and not self._draining.is_set() and os.getppid() != self.parent_pid:
            logger.warning("supervisor (pid %d) is gone; exiting", self.parent_pid)
            self._draining.set()
        return self._draining.is_set()


def _freeze_long_lived_objects() -> None:
    """Move what outlives every trial (TensorFlow's and Keras's modules, the cached datasets, traced
    function caches) out of the garbage collector's sight.

    The runner clears the Keras session after each trial, and Keras then runs a full `gc.collect()`;
    with TensorFlow loaded that walks some 350,000 long-lived objects, about 0.15 s of every gap
    between two trials. After the first trial the process holds what it will keep, so it is collected
    once more and frozen (`gc.freeze`): later collections walk only what later trials create, about
    0.01 s. A frozen object that later becomes garbage is never freed, which costs nothing here since
    these live as long as the process.
    """
    gc.collect()
    gc.freeze()
    logger.debug("froze %d long-lived objects out of garbage collection", gc.get_freeze_count())


def release_or_fail(client: Client, trial_id: int, report: ReleaseReport) -> object:
    """`client.release`, or on a server from before releases existed, a retryable failure (which counts
    an attempt there, but still puts the trial back in the queue)."""
    try:
        return client.release(trial_id, report)
    except ApiError as error:
        # FastAPI's own answers for a path or method it has no route for, unlike a trial it does not know.
        if error.status_code not in (404, 405) or error.messages not in (["Not Found"], ["Method Not Allowed"]):
            raise
    logger.warning("the server at %s cannot release trials; failing trial %d as retryable instead",
                   client.base_url, trial_id)
    return client.fail(trial_id, FailReport(worker_id=report.worker_id, error=report.reason, retryable=True))


def ended_for_good(answer: object) -> bool:
    """Whether the server's answer to a report (the trial, as JSON) shows the trial finished: no retry
    will resume it, so its checkpoint can go."""
    state = answer.get("state") if isinstance(answer, dict) else None
    return state in {member.value for member in TrialState} and TrialState(state).finished


def _floats(metrics: dict[str, float]) -> dict[str, float]:
    # Keras hands back numpy scalars; the wire wants plain floats (non-finite ones the client drops).
    converted: dict[str, float] = {}
    for name, value in metrics.items():
        try:
            converted[str(name)] = float(value)
        except (TypeError, ValueError):
            logger.debug("metric %s is not a number (%r); not reported", name, value)
    return converted


def _short(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name}={value:.4g}" if math.isfinite(value) else f"{name}={value}"
                     for name, value in sorted(_floats(metrics).items()))


# -- entry point -----------------------------------------------------------------------------------

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="base URL of the sweeper server, e.g. http://host:8000")
    parser.add_argument("--token", default=None,
                        help="the server's worker token (default: $SWEEPER_TOKEN, which is how the supervisor "
                             "passes it: a command line shows in `ps`)")
    parser.add_argument("--worker-id", required=True, help="unique id of this worker, e.g. <host>-gpu0")
    parser.add_argument("--host", default=socket.gethostname(), help="host name reported to the server")
    parser.add_argument("--gpu", default=None, help="the GPU index this worker is pinned to (a label only)")
    parser.add_argument("--idle-exit", type=float, default=None, metavar="S",
                        help="exit after S seconds without work (default: never)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder that file datasets (npz:, images:) are read from (default: ./data)")
    parser.add_argument("--plugins", action="append", default=None, metavar="MODULE",
                        help="plugin module(s) registering models and datasets, imported at start "
                             "(repeat, or comma-separated; default: $SWEEPER_PLUGINS)")
    parser.add_argument("--poll-interval", type=float, default=1.0, metavar="S")
    parser.add_argument("--heartbeat-interval", type=float, default=None, metavar="S",
                        help="seconds between heartbeats (default: the server's, in each assignment)")
    parser.add_argument("--retries", type=int, default=8, metavar="N",
                        help="retries of a call when the server is unreachable or answers 5xx (default: 8)")
    parser.add_argument("--state-file", default=None, help="where to record the running trial (for a supervisor)")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="exit (after the current trial) when the parent process dies")
    return parser.parse_args(argv)


def _install_signal_handlers(agent: Agent) -> None:
    def handle(signum: int, _frame: object) -> None:
        logger.info("%s: finishing the current epoch, handing the trial back, then exiting (send it again to "
                    "stop now; the trial then goes back to the queue when its lease ends)",
                    signal.Signals(signum).name)
        agent.shutdown()
        # The next signal ends the process where it stands, by that signal (its exit status says so):
        # the operating system's default action needs no Python code to run, so it works even while the
        # main thread is inside a long TensorFlow op, and nothing of the trial is written on the way out.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    worker = args.worker_id.replace("%", "%%")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [{worker}] %(name)s: %(message)s")
    # httpx logs every request at INFO: several a second per worker, drowning what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Before the first claim: a trial naming a plugin's model or dataset must find it registered.
    from sweeper.plugins import PluginError, load_plugins

    try:
        load_plugins(args.plugins)
    except PluginError as error:
        logger.error("worker %s cannot start: %s", args.worker_id, error)
        return 1
    token = args.token if args.token is not None else os.environ.get("SWEEPER_TOKEN")
    with Client(args.server, retries=args.retries, token=token) as client:
        agent = Agent(client, args.worker_id, args.host, gpu=args.gpu, poll_interval=args.poll_interval,
                      heartbeat_interval=args.heartbeat_interval, idle_exit=args.idle_exit,
                      state_file=args.state_file, parent_pid=os.getppid() if args.exit_with_parent else None,
                      data_root=args.data_root)
        _install_signal_handlers(agent)
        try:
            agent.run()
        except ServerUnavailableError as error:
            logger.error("worker %s stopped: %s", args.worker_id, error)
            return EXIT_SERVER_UNREACHABLE
        except SweeperError as error:
            logger.error("worker %s stopped: %s", args.worker_id, error)
            return 1
        except Exception:
            logger.exception("worker %s crashed", args.worker_id)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

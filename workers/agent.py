"""The worker agent: one process that claims trials from the server and trains them one at a time.

Run by the supervisor, one per GPU, with the environment already pinning it to its GPU; the agent
itself sets nothing GPU-related. TensorFlow is imported on the first trial and kept for the next.

Shutdown follows RQ: the first SIGTERM (or SIGINT) finishes the current trial and exits; the second
stops training at the end of the current epoch and releases the trial to the server as retryable.
"""

from __future__ import annotations

import argparse
import functools
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
from sweeper.messages import Assignment, ClaimRequest, CompleteReport, FailReport, MetricsReport

if TYPE_CHECKING:
    from sweeper.training.runner import EpochCallback, TrialResult

__all__ = ["EXIT_SERVER_UNREACHABLE", "Agent", "FatalWorkerError", "main"]

# Named, not __name__: run as `python -m workers.agent` the module is __main__.
logger = logging.getLogger("workers.agent")

EXIT_SERVER_UNREACHABLE = 75
"""Exit status (BSD's EX_TEMPFAIL) when the server stayed unreachable through every retry: the
supervisor restarts such a worker without counting it as a crash, so workers outlast a server outage."""

_MAX_ERROR_CHARS = 60_000  # FailReport.error allows 65,536; keep room for the truncation note.


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
            # "stop" and "prune" are final: a later "continue" must not undo them.
            if self.server_action == "continue":
                self.server_action = action

    def lose_lease(self, error: ApiError) -> None:
        with self._lock:
            self.lease_lost = self.lease_lost or error

    def action(self, halting: bool) -> str:
        with self._lock:
            if self.lease_lost is not None or self.unreachable is not None or halting:
                return "stop"
            return self.server_action


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
                 heartbeat_interval: float = 10.0, idle_exit: float | None = None,
                 state_file: str | Path | None = None, parent_pid: int | None = None,
                 run_trial: Callable[[Assignment, EpochCallback], TrialResult] | None = None,
                 data_root: Path | None = None):
        if poll_interval <= 0 or heartbeat_interval <= 0:
            raise ValueError(f"intervals must be > 0, but got {poll_interval=}, {heartbeat_interval=}")
        self.client = client
        self.worker_id = worker_id
        self.host = host
        self.gpu = gpu
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.idle_exit = idle_exit
        # The supervisor reads this file when the process dies, to fail the trial it was running.
        self.state_file = Path(state_file) if state_file is not None else None
        # Set when supervised: if the supervisor dies, finish the current trial and exit, not run on orphaned.
        self.parent_pid = parent_pid
        # The trainer; by default sweeper's Keras runner, imported (with TensorFlow) on the first trial.
        self._run_trial_fn = run_trial
        # Where file datasets (npz:..., images:...) are read from; the operator's choice, never a request's.
        self.data_root = data_root
        self.trials_run = 0
        self._draining = threading.Event()
        self._halting = threading.Event()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def shutdown(self, now: bool = False) -> None:
        """Exit after the current trial; with `now`, stop it at the next epoch end and release it."""
        self._draining.set()
        if now:
            self._halting.set()

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
                self._release(assignment, "worker shut down before starting it")
                break
            self._run_trial(assignment)
            idle_since = time.monotonic()
        logger.info("worker %s exiting after %d trial(s)", self.worker_id, self.trials_run)

    # -- one trial ---------------------------------------------------------------------------------

    def _run_trial(self, assignment: Assignment) -> None:
        trial_id = assignment.trial_id
        logger.info("claimed trial %d of sweep %d (%s on %s): %s", trial_id, assignment.sweep_id, assignment.model,
                    assignment.dataset, assignment.hparams)
        self._record_current(trial_id)
        try:
            self._train_and_report(assignment)
        finally:
            self._record_current(None)
        self.trials_run += 1

    def _train_and_report(self, assignment: Assignment) -> None:
        trial_id = assignment.trial_id
        control = _TrialControl()
        on_epoch_end = functools.partial(self._on_epoch_end, assignment, control)
        failure: str | None = None
        with _Heartbeat(self.client, trial_id, self.worker_id, self.heartbeat_interval, control):
            try:
                train = self._trainer()
            except Exception as error:
                self._release(assignment, f"worker {self.worker_id} cannot load the trainer:\n"
                                          f"{traceback.format_exc()}")
                raise FatalWorkerError(f"cannot load the trainer: {type(error).__name__}: {error}") from error
            started = time.monotonic()
            try:
                result = train(assignment, on_epoch_end)
            except Exception:
                failure = traceback.format_exc()
        elapsed = time.monotonic() - started

        if control.lease_lost is not None:
            logger.warning("dropping trial %d: %s", trial_id, control.lease_lost)
            return
        if control.unreachable is not None:
            # Not the trial's fault: leave it to the server's lease expiry and let the supervisor restart us.
            raise control.unreachable
        if failure is not None:
            logger.error("trial %d failed after %.1fs:\n%s", trial_id, elapsed, failure.rstrip())
            self._send(trial_id, lambda: self.client.fail(
                trial_id, FailReport(worker_id=self.worker_id, error=_clip(failure), retryable=False)))
            return
        if self._halting.is_set() and result.stopped and control.server_action == "continue":
            self._release(assignment, f"worker {self.worker_id} shut down after {result.epochs_run} epoch(s)")
            return
        logger.info("trial %d finished: %d epoch(s) in %.1fs%s, metrics %s", trial_id, result.epochs_run, elapsed,
                    f" (stopped early: {control.server_action})" if result.stopped else "", _short(result.metrics))
        self._send(trial_id, lambda: self.client.complete(
            trial_id, CompleteReport(worker_id=self.worker_id, metrics=_floats(result.metrics))))

    def _on_epoch_end(self, assignment: Assignment, control: _TrialControl, epoch: int,
                      metrics: dict[str, float]) -> str:
        """Post the epoch's metrics; the answer tells the runner to continue, stop or prune."""
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
        return control.action(halting=self._halting.is_set())

    def _trainer(self) -> Callable[[Assignment, EpochCallback], TrialResult]:
        if self._run_trial_fn is None:
            # Imported here, not at module level: the agent answers --help and idles without TensorFlow.
            from sweeper.training import devices, runner
            devices.enable_memory_growth()
            self._run_trial_fn = functools.partial(runner.run_trial, data_root=self.data_root)
        return self._run_trial_fn

    # -- reporting ---------------------------------------------------------------------------------

    def _release(self, assignment: Assignment, reason: str) -> None:
        """Give the trial back as retryable, so another worker (or this one, later) runs it."""
        logger.warning("releasing trial %d: %s", assignment.trial_id, reason.splitlines()[0])
        self._send(assignment.trial_id, lambda: self.client.fail(
            assignment.trial_id, FailReport(worker_id=self.worker_id, error=_clip(reason), retryable=True)))

    def _send(self, trial_id: int, call: Callable[[], object]) -> None:
        try:
            call()
        except (LeaseLostError, NotFoundError) as error:
            logger.warning("dropping trial %d: %s", trial_id, error)

    def _record_current(self, trial_id: int | None) -> None:
        if self.state_file is None:
            return
        if trial_id is None:
            self.state_file.unlink(missing_ok=True)
            return
        partial = self.state_file.with_name(self.state_file.name + ".tmp")
        partial.write_text(json.dumps({"trial_id": trial_id, "worker_id": self.worker_id}))
        os.replace(partial, self.state_file)  # atomic: the supervisor never reads half a file

    def _should_exit(self) -> bool:
        if self.parent_pid is not None and not self._draining.is_set() and os.getppid() != self.parent_pid:
            logger.warning("supervisor (pid %d) is gone; exiting", self.parent_pid)
            self._draining.set()
        return self._draining.is_set()


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


def _clip(text: str) -> str:
    # Keep the end of a long traceback: the exception itself is on its last lines.
    if len(text) <= _MAX_ERROR_CHARS:
        return text
    return f"[... {len(text) - _MAX_ERROR_CHARS} characters cut ...]\n" + text[-_MAX_ERROR_CHARS:]


# -- entry point -----------------------------------------------------------------------------------

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="base URL of the sweeper server, e.g. http://host:8000")
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
    parser.add_argument("--heartbeat-interval", type=float, default=10.0, metavar="S")
    parser.add_argument("--retries", type=int, default=8, metavar="N",
                        help="retries of a call when the server is unreachable or answers 5xx (default: 8)")
    parser.add_argument("--state-file", default=None, help="where to record the running trial (for a supervisor)")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="exit (after the current trial) when the parent process dies")
    return parser.parse_args(argv)


def _install_signal_handlers(agent: Agent) -> None:
    def handle(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if not agent.draining:
            logger.info("%s: finishing the current trial, then exiting (send it again to stop now)", name)
            agent.shutdown()
            return
        logger.warning("%s again: stopping the current trial at the end of this epoch and releasing it", name)
        agent.shutdown(now=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)  # a third signal ends the process at once

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
    with Client(args.server, retries=args.retries) as client:
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

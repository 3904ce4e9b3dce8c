"""The worker agent: one process that claims trials from the server and trains them one at a time.

Run by the supervisor, one per GPU or group of GPUs, with the environment already pinning it to its GPUs
(and, when several share them, capping its memory; on a CPU, saying how many devices to split it into);
the agent only applies that. Its claims say how many GPUs it gives a trial (`ClaimRequest.gpus`), so the
server hands it only trials that fit. TensorFlow is imported on the
first trial and kept for the next.

Each claim comes with a lease token, and every call on the trial carries it. A trial ends in one
report. Completed or pruned: `complete` with its metrics. An exception: `fail`, with its kind (error,
nan, oom or io), a one-line error, the traceback, and retryable only for a `RetryableError` (see
workers.failures); out of memory leaves the process able to run the next trial, since the runner
clears the Keras session. Cancelled (the server answers "cancel" to a heartbeat or an epoch report):
training stops after the current batch and the trial is failed as "cancelled". Stopped ("stop" from
the server, or this worker shutting down): it stops at the end of the epoch, whose checkpoint the next
attempt resumes from, and is released: pending again, no attempt counted. Exploited (a Population Based
Training member's report answered with an exploit): the answer goes to the runner, which loads the donor's
snapshot and trains on with the new segment's hparams. Heartbeats extend the lease
every `heartbeat_seconds` of the assignment meanwhile.

Abandoned: when the server refuses a heartbeat or report (409: a newer claim holds the trial; 404: the
trial is gone), the trial is no longer this process's. Training stops after the current batch, nothing
more is written to the trial's logs or checkpoint (`TrialAbandonedError` out of the runner's callbacks),
and no report is sent. Orphaned: when the supervisor dies, training stops after the current batch, the
trial is released (its checkpoint of the last finished epoch stays for the next attempt), and the
process exits.

Shutdown: the first SIGTERM (or SIGINT) finishes the current epoch, releases the trial and exits 0;
the second ends the process at once, by that signal: its lease (or the supervisor, which reads the
trial from the state file) puts the trial back in the queue.
"""

from __future__ import annotations

import argparse
import functools
import gc
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

from sweeper import SweeperError
from sweeper.client import ApiError, Client, LeaseLostError, NotFoundError, ServerUnavailableError
from sweeper.messages import (Action, Assignment, ClaimRequest, CompleteReport, Directive, FailReport, FailureKind,
                              HeartbeatRequest, LeaseConflictReason, MetricsReport, ReleaseReport)
from sweeper.training.checkpoints import checkpoint_folder
from workers.failures import clip, failure_report
from workers.handoff import (CPU_DEVICES_VARIABLE, EXIT_SERVER_UNREACHABLE, EXIT_WORKER_ID_IN_USE, TOKEN_VARIABLE,
                             RunningTrial, StateFile, delete_checkpoint_if_finished)
from workers.identity import ReservedId, WorkerIdInUseError, adopt, reserve_exactly
from workers.lease import Heartbeat, TrialControl
from workers.orphans import SupervisorWatch

if TYPE_CHECKING:
    from sweeper.training.runner import TrialResult

    Trainer = Callable[..., TrialResult]
    """Called as `trainer(assignment, on_epoch_end, interrupt=...)`, like `runner.run_trial`."""

__all__ = ["Agent", "FatalWorkerError", "main"]

# Named, not __name__: run as `python -m workers.agent` the module is __main__.
logger = logging.getLogger("workers.agent")

_MAX_REASON_CHARS = 60_000  # ReleaseReport.reason allows 65,536
_MIN_HEARTBEAT_SECONDS = 0.05  # whatever an assignment says, never a busy loop against the server


class FatalWorkerError(SweeperError):
    """This worker cannot run any trial (the trainer does not load); it exits so a human can look."""


class Agent:
    """Claims trials and trains them, one at a time, until idle for `idle_exit` seconds or shut down."""

    def __init__(self, client: Client, worker_id: str, host: str, gpu: str | None = None, poll_interval: float = 1.0,
                 heartbeat_interval: float | None = None, idle_exit: float | None = None,
                 state_file: str | Path | None = None, supervisor_pid: int | None = None,
                 run_trial: Trainer | None = None, data_root: Path | None = None, gpus: int = 1):
        if poll_interval <= 0 or (heartbeat_interval is not None and heartbeat_interval <= 0):
            raise ValueError(f"intervals must be > 0, but got {poll_interval=}, {heartbeat_interval=}")
        self.client = client
        self.worker_id = worker_id
        self.host = host
        self.gpu = gpu
        # GPUs (a CPU worker: devices) this worker gives one trial: its claims ask only for trials that fit.
        self.gpus = gpus
        self.poll_interval = poll_interval
        # None: every `heartbeat_seconds` the server puts in the assignment; a number overrides it.
        self.heartbeat_interval = heartbeat_interval
        self.idle_exit = idle_exit
        # The supervisor reads this file when the process dies, to report the trial it was running.
        self.state_file = StateFile(state_file) if state_file is not None else None
        # Set when supervised: a worker whose supervisor died stops its trial, hands it back and exits.
        self.supervisor = SupervisorWatch(supervisor_pid)
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

    def check_supervisor(self) -> bool:
        """True when the supervisor is gone; the trial then stops after its current batch and the agent exits."""
        if not self.supervisor.gone():
            return False
        self._draining.set()
        return True

    def run(self) -> None:
        """Claim and train until idle for `idle_exit` seconds or shut down; raises on a fatal error.

        WorkerIdInUseError when a process elsewhere claimed this worker's trial under its own id.
        """
        logger.info("worker %s on %s (GPU %s) asking %s for trials", self.worker_id, self.host,
                    self.gpu if self.gpu is not None else "none", self.client.base_url)
        request = ClaimRequest(worker_id=self.worker_id, host=self.host, gpu=self.gpu, gpus=self.gpus)
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
            if self._should_exit():
                # Shut down (or orphaned) while the claim was in flight: hand the trial straight back.
                self._release(assignment, f"worker {self.worker_id} {self._leaving_because()} before starting it")
                break
            self._run_trial(assignment)
            idle_since = time.monotonic()
        logger.info("worker %s exiting after %d trial(s)", self.worker_id, self.trials_run)

    # -- one trial ---------------------------------------------------------------------------------

    def _run_trial(self, assignment: Assignment) -> None:
        trial_id = assignment.trial_id
        logger.info("claimed %s (%s on %s, attempt %d, lease token %d): %s", assignment.trial_name,
                    assignment.model, assignment.dataset, assignment.attempt,
                    assignment.lease_token, assignment.hparams)
        if self.state_file is not None:
            self.state_file.write(RunningTrial(trial_id=trial_id, trial_name=assignment.trial_name,
                                               worker_id=self.worker_id,
                                               lease_token=assignment.lease_token,
                                               checkpoint_dir=checkpoint_folder(assignment)))
        try:
            self._train_and_report(assignment)
        finally:
            if self.state_file is not None:
                self.state_file.clear()
        if self.trials_run == 0:
            _freeze_long_lived_objects()
        self.trials_run += 1

    def _train_and_report(self, assignment: Assignment) -> None:
        trial_id, token = assignment.trial_id, assignment.lease_token
        control = TrialControl(trial_id)
        on_epoch_end = functools.partial(self._on_epoch_end, assignment, control)
        interval = self.heartbeat_interval if self.heartbeat_interval is not None else assignment.heartbeat_seconds
        interval = max(interval, _MIN_HEARTBEAT_SECONDS)
        failure: Exception | None = None
        trace = ""
        heartbeat = HeartbeatRequest(worker_id=self.worker_id, lease_token=token)
        with Heartbeat(self.client, trial_id, heartbeat, interval, control, on_tick=self.check_supervisor):
            try:
                train = self._trainer()
            except Exception as error:
                self._release(assignment, f"worker {self.worker_id} cannot load the trainer:\n"
                                          f"{traceback.format_exc()}")
                raise FatalWorkerError(f"cannot load the trainer: {type(error).__name__}: {error}") from error
            started = time.monotonic()
            try:
                result = train(assignment, on_epoch_end,
                               interrupt=lambda: control.interrupt(orphaned=self.check_supervisor()))
            except Exception as error:  # TrialAbandonedError included: the lease check below drops it
                failure, trace = error, traceback.format_exc()
        elapsed = time.monotonic() - started

        if control.lease_lost is not None:
            # Another process may be training the trial now: no report, no checkpoint deleted.
            logger.warning("dropping %s: %s", assignment.trial_name, control.lease_lost)
            if _claimed_under_this_id(control.lease_lost):
                raise WorkerIdInUseError(
                    f"worker id {self.worker_id!r} is in use by another process, which claimed trial {trial_id} "
                    f"under it ({control.lease_lost}); this worker stops, so that the two do not keep taking "
                    f"trials from each other: give each worker its own id")
            return
        if control.unreachable is not None:
            # Not the trial's fault: leave it to the server's lease expiry and let the supervisor restart us.
            raise control.unreachable
        if failure is not None:
            self._report_failure(assignment, failure, trace, elapsed)
            return
        if result.stopped_by == Action.stop:
            why = self._leaving_because() if self.draining else "was asked by the server to stop it"
            self._release(assignment, f"worker {self.worker_id} {why} after {result.epochs_run} epoch(s)",
                          epochs_done=result.epochs_run)
            return
        if result.stopped_by == Action.cancel:
            logger.info("%s cancelled after %d epoch(s) in %.1fs", assignment.trial_name, result.epochs_run, elapsed)
            self._report(assignment, lambda: self.client.fail(trial_id, FailReport(
                worker_id=self.worker_id, lease_token=token, error="cancelled", retryable=False,
                kind=FailureKind.error)))
            return
        logger.info("%s finished: %d epoch(s) in %.1fs%s, metrics %s", assignment.trial_name, result.epochs_run,
                    elapsed, f" (stopped early: {result.stopped_by})" if result.stopped else "",
                    _short(result.metrics))
        self._report(assignment, lambda: self.client.complete(trial_id, CompleteReport(
            worker_id=self.worker_id, lease_token=token, metrics=_floats(result.metrics))))

    def _report_failure(self, assignment: Assignment, error: Exception, trace: str, elapsed: float) -> None:
        trial_id = assignment.trial_id
        report = failure_report(self.worker_id, assignment.lease_token, error, trace, assignment.hparams)
        logger.error("%s failed after %.1fs (%s%s): %s\n%s", assignment.trial_name, elapsed, report.kind.value,
                     ", retryable" if report.retryable else "", report.error, trace.rstrip())
        if report.kind is FailureKind.oom:
            # The runner cleared the Keras session; collecting now frees what the failed trial still held,
            # so the next trial, likely a smaller one, gets the memory back.
            gc.collect()
        self._report(assignment, lambda: self.client.fail(trial_id, report))

    def _on_epoch_end(self, assignment: Assignment, control: TrialControl, epoch: int,
                      metrics: dict[str, float]) -> Directive:
        """Post the epoch's metrics; the answer tells the runner to continue, stop, prune or cancel, or (a PBT
        member) to exploit another member's snapshot.

        TrialAbandonedError when the trial is no longer this worker's: the runner then writes nothing more.
        """
        reply: Directive | None = None
        if control.lease_lost is None and control.unreachable is None:
            report = MetricsReport(worker_id=self.worker_id, lease_token=assignment.lease_token, epoch=epoch,
                                   metrics=_floats(metrics))
            try:
                reply = self.client.report_metrics(assignment.trial_id, report)
                control.server_says(reply.action)
            except (LeaseLostError, NotFoundError) as error:
                logger.warning("epoch %d of %s refused: %s", epoch, assignment.trial_name, error)
                control.lose_lease(error)
            except ServerUnavailableError as error:
                logger.error("cannot report epoch %d of %s: %s", epoch, assignment.trial_name, error)
                control.unreachable = error
            except ApiError as error:
                # A rejected report (a bad metric name, say) costs one point of history, not the trial.
                logger.warning("server rejected epoch %d of %s: %s", epoch, assignment.trial_name, error)
        return control.answer(reply, leaving=self.check_supervisor() or self.draining)

    def _trainer(self) -> Trainer:
        if self._run_trial_fn is None:
            # Imported here, not at module level: the agent answers --help and idles without TensorFlow.
            from sweeper.training import devices, runner
            devices.split_cpu(devices.cpu_devices_from_environment())
            devices.configure_gpus(devices.memory_limit_from_environment())
            self._run_trial_fn = functools.partial(runner.run_trial, data_root=self.data_root)
        return self._run_trial_fn

    # -- reporting ---------------------------------------------------------------------------------

    def _release(self, assignment: Assignment, reason: str, epochs_done: int = 0) -> None:
        """Give the trial back unfinished: pending again for any worker, no attempt counted."""
        logger.warning("releasing %s: %s", assignment.trial_name, reason.splitlines()[0])
        report = ReleaseReport(worker_id=self.worker_id, lease_token=assignment.lease_token,
                               reason=clip(reason, _MAX_REASON_CHARS), epochs_done=epochs_done)
        self._report(assignment, lambda: self.client.release(assignment.trial_id, report))

    def _report(self, assignment: Assignment, call: Callable[[], object]) -> None:
        """Send the report that ends this lease; delete the checkpoint when the answer shows the trial finished
        for good (a trial that may be retried keeps it to resume from)."""
        try:
            answer = call()
        except (LeaseLostError, NotFoundError) as error:
            logger.warning("dropping %s: %s", assignment.trial_name, error)
            return
        delete_checkpoint_if_finished(answer, checkpoint_folder(assignment))

    def _leaving_because(self) -> str:
        if self.supervisor.gone():
            return f"lost its supervisor (pid {self.supervisor.supervisor_pid})"
        return "shut down"

    def _should_exit(self) -> bool:
        return self.check_supervisor() or self._draining.is_set()


def _claimed_under_this_id(refusal: ApiError) -> bool:
    """Whether the server refused the call because a later claim under this worker's own id holds the trial:
    another process (on another host, or with its own lock folder) uses the id. Any other refusal is the
    ordinary case (the lease ended and another worker took the trial), after which claiming goes on."""
    return isinstance(refusal, LeaseLostError) and refusal.reason is LeaseConflictReason.superseded


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
                        help=f"the server's worker token (default: ${TOKEN_VARIABLE}, which is how the supervisor "
                             f"passes it: a command line shows in `ps`)")
    parser.add_argument("--worker-id", required=True,
                        help="unique id of this worker, e.g. <host>-gpu0; refused when another process on this host "
                             "uses it")
    parser.add_argument("--host", default=socket.gethostname(), help="host name reported to the server")
    parser.add_argument("--gpu", default=None,
                        help="the GPU index (or group, 0,1) this worker is pinned to (a label only)")
    parser.add_argument("--gpus", type=int, default=None, metavar="N",
                        help="GPUs this worker gives one trial, sent with each claim (default: how many --gpu "
                             f"lists, or on a CPU ${CPU_DEVICES_VARIABLE}, else 1)")
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
    supervised = parser.add_argument_group("set by a supervisor")
    supervised.add_argument("--state-file", default=None, help="where to record the running trial")
    supervised.add_argument("--supervisor-pid", type=int, default=None, metavar="PID",
                            help="the supervisor's pid: when it dies, stop the trial, hand it back and exit")
    supervised.add_argument("--worker-id-lock-fd", type=int, default=None, metavar="FD",
                            help="the supervisor's open lock file reserving --worker-id, inherited: this process "
                                 "holds the reservation too")
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
    # Wakes the process the moment its supervisor dies (Linux); elsewhere each heartbeat checks.
    agent.supervisor.signal_on_death(agent.check_supervisor)


def _claimed_gpus(args: argparse.Namespace) -> int:
    """How many GPUs the claims say this worker has: --gpus, else how many --gpu lists, else the CPU's devices."""
    if args.gpus is not None:
        return int(args.gpus)
    if args.gpu:
        return len([index for index in args.gpu.split(",") if index.strip()])
    from sweeper.training.devices import cpu_devices_from_environment

    return cpu_devices_from_environment()


def _reserve(args: argparse.Namespace) -> ReservedId:
    """This process's hold on its worker id: the supervisor's, inherited, or its own when started alone."""
    if args.worker_id_lock_fd is not None:
        return adopt(args.worker_id, args.worker_id_lock_fd)
    return reserve_exactly(args.worker_id)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    worker = args.worker_id.replace("%", "%%")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [{worker}] %(name)s: %(message)s")
    # httpx logs every request at INFO: several a second per worker, drowning what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        # Held until this process exits: no other process on this host may claim under this id meanwhile.
        reserved = _reserve(args)
    except WorkerIdInUseError as error:
        logger.error("worker %s cannot start: %s", args.worker_id, error)
        return EXIT_WORKER_ID_IN_USE
    except ValueError as error:
        logger.error("worker %s cannot start: %s", args.worker_id, error)
        return 1
    # Before the first claim: a trial naming a plugin's model or dataset must find it registered.
    from sweeper.plugins import PluginError, load_plugins

    try:
        load_plugins(args.plugins)
    except PluginError as error:
        logger.error("worker %s cannot start: %s", args.worker_id, error)
        return 1
    try:
        gpus = _claimed_gpus(args)
    except ValueError as error:  # a SWEEPER_CPU_DEVICES that is no number of devices
        logger.error("worker %s cannot start: %s", args.worker_id, error)
        return 1
    token = args.token if args.token is not None else os.environ.get(TOKEN_VARIABLE)
    with Client(args.server, retries=args.retries, token=token) as client:
        agent = Agent(client, args.worker_id, args.host, gpu=args.gpu, poll_interval=args.poll_interval,
                      heartbeat_interval=args.heartbeat_interval, idle_exit=args.idle_exit,
                      state_file=args.state_file, supervisor_pid=args.supervisor_pid, data_root=args.data_root,
                      gpus=gpus)
        _install_signal_handlers(agent)
        try:
            agent.run()
        except ServerUnavailableError as error:
            logger.error("worker %s stopped: %s", args.worker_id, error)
            return EXIT_SERVER_UNREACHABLE
        except WorkerIdInUseError as error:
            logger.error("worker %s stopped: %s", args.worker_id, error)
            return EXIT_WORKER_ID_IN_USE
        except SweeperError as error:
            logger.error("worker %s stopped: %s", args.worker_id, error)
            return 1
        except Exception:
            logger.exception("worker %s crashed", args.worker_id)
            return 1
        finally:
            reserved.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())

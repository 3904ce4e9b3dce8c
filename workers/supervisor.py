"""The supervisor: worker processes per GPU (or group of GPUs), each pinned to its GPUs before TensorFlow
can start.

Pinning happens in the child's environment (`CUDA_VISIBLE_DEVICES=<index>`), set before the process
exists, so each child's TensorFlow sees exactly its GPUs and calls them GPU 0, 1, ... With
`gpus_per_trial` G above 1, the GPUs are grouped G at a time, the most closely linked together
(`workers.gpus.group_gpus`), and each child gets a group (`CUDA_VISIBLE_DEVICES=0,2`) on which its trials
train with MirroredStrategy. With `trials_per_gpu` N above 1, N children share each GPU or group, each
limited to an equal share of the memory of every GPU in it (`SWEEPER_GPU_MEMORY_MB`, see
`workers.gpus.memory_share_mb`). On a host without GPUs, `cpu_devices` D above 1 splits each CPU
worker's CPU into D TensorFlow devices (`SWEEPER_CPU_DEVICES`): a way to run multi-GPU trials' code,
MirroredStrategy and all, where there is no GPU, for tests and trying a spec out.

Like RQ's work horse, a child that dies abnormally is recorded with its exit code or signal, the trial
it held is failed on the server as a crash (retryable: it resumes from its checkpoint while attempts
remain), and the child is restarted on the same GPU (bounded, with backoff). A child that dies while
the supervisor is stopping did nothing wrong: its trial is released, with no attempt counted. Either
report carries the lease token the child recorded (see workers.handoff), so it is refused if a newer
claim holds the trial.

Each child holds its worker id's reservation too (the open lock file is passed down to it), and is told
the supervisor's pid: should the supervisor die, its children stop their trials, hand them back and
exit, and until they have, a new supervisor on this host takes other ids.

A signal may reach the children twice: a batch scheduler (Slurm's `scancel`, its time limit, a
preemption) or a service manager that signals every process of a job delivers it to them directly, and
the supervisor forwards it as well. To a child a second signal means "stop now", so the first one is
forwarded, after a moment in which a child that got it directly runs its handler, to the children that
still catch it: one whose handler for it was installed and is gone now (Linux: `SigCgt` in
/proc/<pid>/status, watched from the child's start) took it already.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sweeper.client import ApiError, AuthError, Client, LeaseLostError, NotFoundError
from sweeper.messages import FailReport, FailureKind, ReleaseReport
from workers.gpus import (Gpu, GpuLinks, discover_gpus, discover_links, group_memory_share_mb, plan_groups,
                          select_gpus, wants_no_gpu)
from workers.handoff import (CPU_DEVICES_VARIABLE, EXIT_SERVER_UNREACHABLE, EXIT_WORKER_ID_IN_USE,
                             MEMORY_LIMIT_VARIABLE, TOKEN_VARIABLE, RunningTrial, StateFile,
                             delete_checkpoint_if_finished)
from workers.identity import ReservedId, reserve

__all__ = ["ChildExit", "Supervisor", "run_workers"]

logger = logging.getLogger(__name__)

_POLL_SECONDS = 0.1
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_DIRECT_DELIVERY_SECONDS = 0.5
"""How long the first signal waits before it is forwarded: time for children that got it too to handle it."""
_TERM_BIT = 1 << (signal.SIGTERM - 1)


@dataclass(frozen=True)
class ChildExit:
    """An abnormal end of a worker process, as recorded by the supervisor."""

    worker_id: str
    gpu: str | None
    returncode: int
    trial_id: int | None
    """The trial the child was running when it died, if any (reported to the server with this cause)."""

    @property
    def signal_name(self) -> str | None:
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"

    def describe(self) -> str:
        if self.signal_name is not None:
            return f"killed by {self.signal_name}"
        return f"exited with code {self.returncode}"

    @property
    def cause(self) -> str:
        """Why it died, for the trial's error: "signal SIGKILL" or "exit code 3"."""
        if self.signal_name is not None:
            return self.signal_name if self.signal_name.startswith("signal ") else f"signal {self.signal_name}"
        return f"exit code {self.returncode}"


@dataclass
class _Slot:
    """One worker seat: a worker id, its GPU index or group ("0,2"; None for CPU), how many devices it gives
    a trial, and the process currently in it."""

    reserved: ReservedId
    gpu: str | None
    env: dict[str, str]
    devices: int = 1
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None
    ended: bool = False
    gave_up: bool = False
    caught: int = 0
    """The signals the process was seen catching (a mask, bit n-1 for signal n): see _signal_children."""

    @property
    def worker_id(self) -> str:
        return self.reserved.worker_id


class Supervisor:
    """Starts, watches and restarts the worker processes of one host."""

    def __init__(self, server_url: str, gpus: Sequence[Gpu | str], cpu_workers: int = 1, host: str | None = None,
                 idle_exit: float | None = None, child_command: list[str] | None = None, max_restarts: int = 5,
                 restart_backoff: float = 1.0, max_backoff: float = 60.0, healthy_after: float = 300.0,
                 output: Path | None = None, data_root: Path | None = None, plugins: Sequence[str] = (),
                 trials_per_gpu: int = 1, token: str | None = None, gpus_per_trial: int = 1,
                 links: GpuLinks | None = None, cpu_devices: int = 1, id_prefix: str | None = None):
        if not gpus and cpu_workers < 1:
            raise ValueError(f"with no GPUs, `cpu_workers >= 1` must hold, but got {cpu_workers=}")
        if max_restarts < 0:
            raise ValueError(f"`max_restarts >= 0` must hold, but got {max_restarts=}")
        # A bare index is a GPU of unknown memory: shared, its workers grow their memory instead.
        gpus = [gpu if isinstance(gpu, Gpu) else Gpu(index=str(gpu)) for gpu in gpus]
        # Impossible combinations fail here, before ids are reserved: groups that do not divide the GPUs,
        # a GPU too small to share.
        self.groups = plan_groups(gpus, trials_per_gpu=trials_per_gpu, gpus_per_trial=gpus_per_trial,
                                  cpu_devices=cpu_devices, links=links)
        self.trials_per_gpu = trials_per_gpu
        self.gpus_per_trial = gpus_per_trial
        self.cpu_devices = cpu_devices
        self.server_url = server_url
        self.host = host or socket.gethostname()
        # What worker ids start with: the host, or a name the operator gives (a Slurm array task's).
        self.id_prefix = id_prefix or self.host
        self.idle_exit = idle_exit
        self.child_command = list(child_command) if child_command else [sys.executable, "-m", "workers.agent"]
        self.max_restarts = max_restarts
        self.restart_backoff = restart_backoff
        self.max_backoff = max_backoff
        # A child that ran this long before dying was healthy: its crash does not count toward a crash loop.
        self.healthy_after = healthy_after
        # Where the children's output goes: inherited by default; a file when a live display owns the terminal.
        self.output = output
        self.data_root = data_root.resolve() if data_root is not None else None
        # Plugin modules each child imports before its first trial (the operator's, from the command line).
        self.plugins = list(plugins)
        # The server's worker token: given to each child in its environment, never on its command line,
        # which any user of the machine can read with `ps`.
        self._token = token
        self.slots = [self._gpu_slot(group, slot) for group in self.groups for slot in range(trials_per_gpu)] \
            if gpus else [self._cpu_slot(k) for k in range(cpu_workers)]
        self._lock = threading.RLock()
        self._stopping = False
        self._signals_seen = 0
        self._pending_signals: list[int] = []
        self._exits: list[ChildExit] = []
        self._state_dir: Path | None = None

    @property
    def worker_ids(self) -> list[str]:
        return [slot.worker_id for slot in self.slots]

    @property
    def exits(self) -> list[ChildExit]:
        """Every abnormal child exit so far, in the order they happened."""
        with self._lock:
            return list(self._exits)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._state_dir is not None:
                raise RuntimeError("this supervisor was already started")
            self._state_dir = Path(tempfile.mkdtemp(prefix="sweeper-workers-"))
            for slot in self.slots:
                self._spawn(slot)

    def wait(self) -> int:
        """Block until every child has ended; 0 unless a child kept crashing and was given up on."""
        if self._state_dir is None:
            raise RuntimeError("start() the supervisor before waiting on it")
        while True:
            while self._pending_signals:
                self.forward(self._pending_signals.pop(0))
            with self._lock:
                self._reap()
                if all(slot.ended for slot in self.slots):
                    break
            time.sleep(_POLL_SECONDS)
        self._cleanup()
        gave_up = [slot.worker_id for slot in self.slots if slot.gave_up]
        if gave_up:
            logger.error("gave up on worker(s) %s after repeated crashes", ", ".join(gave_up))
            return 1
        return 0

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every child (each finishes its current epoch and releases its trial), then SIGKILL
        what is left after `timeout`.

        The trial of a killed child is released too: pending again, resumed from its last saved epoch.
        """
        with self._lock:
            self._stopping = True
            self._signal_children(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            process = slot.process
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker %s did not stop within %.0fs; killing it", slot.worker_id, timeout)
                process.kill()
                process.wait()
        with self._lock:
            self._reap()
            # Every child is gone now (or was never started): the ids and state files are free.
            self._cleanup()

    def forward(self, signum: int, direct_delivery_seconds: float = _DIRECT_DELIVERY_SECONDS) -> None:
        """Pass a SIGTERM/SIGINT on to every child; from then on nothing is restarted.

        The first one goes, after `direct_delivery_seconds`, only to the children that still catch it:
        one that got it straight from the sender has handled it already, and would take a second as
        "stop now" (see the module's docstring).
        """
        with self._lock:
            self._stopping = True
            self._signals_seen += 1
            first = self._signals_seen == 1
            name = signal.Signals(signum).name
            if first:
                logger.info("%s: workers finish their current epochs, hand their trials back and exit "
                            "(send it again to stop now)", name)
            else:
                logger.warning("%s again: workers stop now; their trials go back to the queue", name)
        if first:
            time.sleep(direct_delivery_seconds)
        with self._lock:
            self._signal_children(signum, only_catching=first)

    def install_signal_handlers(self) -> None:
        """Forward SIGTERM, SIGINT and SIGHUP to the children while wait() runs (main thread only)."""
        def handle(signum: int, _frame: object) -> None:
            # Only queued here: wait() forwards it between two passes over the children, so a signal can
            # never land halfway through a restart and miss the child being started.
            self._pending_signals.append(signal.SIGTERM if signum == signal.SIGHUP else signum)

        for sig in _FORWARDED:
            signal.signal(sig, handle)

    # -- children ----------------------------------------------------------------------------------

    def _gpu_slot(self, group: tuple[Gpu, ...], slot: int) -> _Slot:
        # PCI bus order makes CUDA number GPUs as NVML and nvidia-smi do; CUDA's default (fastest
        # first) could pin a child to a different GPU than the index it was given.
        indices = [gpu.index for gpu in group]
        env = {"CUDA_VISIBLE_DEVICES": ",".join(indices), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        share = group_memory_share_mb(group, self.trials_per_gpu)
        if share is None:
            env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        else:
            # A fixed share instead of growth: TensorFlow cannot combine the two (see sweeper.training.devices).
            env[MEMORY_LIMIT_VARIABLE] = str(share)
        # One worker per GPU keeps the id it always had (a group's joins its GPUs: gpu0+2); sharing ones are
        # told apart by their slot.
        base = f"{self.id_prefix}-gpu{'+'.join(indices)}"
        if self.trials_per_gpu > 1:
            base += f"-{slot}"
        return _Slot(reserve(base), gpu=",".join(indices), env=env, devices=len(group))

    def _cpu_slot(self, k: int) -> _Slot:
        env = {"CUDA_VISIBLE_DEVICES": "-1"}
        if self.cpu_devices > 1:
            env[CPU_DEVICES_VARIABLE] = str(self.cpu_devices)
        return _Slot(reserve(f"{self.id_prefix}-cpu{k}"), gpu=None, env=env, devices=self.cpu_devices)

    def _state_file(self, slot: _Slot) -> StateFile:
        assert self._state_dir is not None
        return StateFile(self._state_dir / f"{slot.worker_id}.json")

    def _spawn(self, slot: _Slot) -> None:
        lock = slot.reserved.fileno()
        command = [*self.child_command, "--server", self.server_url, "--worker-id", slot.worker_id,
                   "--host", self.host, "--state-file", str(self._state_file(slot).path),
                   "--supervisor-pid", str(os.getpid()), "--worker-id-lock-fd", str(lock)]
        if slot.gpu is not None:
            command += ["--gpu", slot.gpu]
        command += ["--gpus", str(slot.devices)]
        if self.idle_exit is not None:
            command += ["--idle-exit", str(self.idle_exit)]
        if self.data_root is not None:
            command += ["--data-root", str(self.data_root)]
        if self.plugins:
            command += ["--plugins", ",".join(self.plugins)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **slot.env}
        if self._token is not None:
            env[TOKEN_VARIABLE] = self._token
        # Its own process group: a terminal's Ctrl-C reaches only the supervisor, which forwards it once,
        # so one Ctrl-C means "finish the trial", not the "stop now" of a second signal. The lock file
        # passed down keeps the worker id reserved for as long as the child lives, even past this process.
        if self.output is not None:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            with self.output.open("ab") as sink:
                slot.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=sink,
                                                stderr=subprocess.STDOUT, process_group=0, pass_fds=[lock])
        else:
            slot.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, process_group=0,
                                            pass_fds=[lock])
        slot.started_at = time.monotonic()
        slot.restart_at = None
        slot.caught = 0
        if slot.gpu is None:
            where = "CPU" + (f" ({slot.devices} devices)" if slot.devices > 1 else "")
        else:
            where = f"GPU{'s' if slot.devices > 1 else ''} {slot.gpu}"
        if MEMORY_LIMIT_VARIABLE in slot.env:
            where += f" ({slot.env[MEMORY_LIMIT_VARIABLE]} MB)"
        logger.info("started worker %s on %s (pid %d)", slot.worker_id, where, slot.process.pid)

    def _signal_children(self, signum: int, only_catching: bool = False) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                if only_catching and _handled_already(slot, signum):
                    logger.info("worker %s got %s directly; not forwarding it", slot.worker_id,
                                signal.Signals(signum).name)
                    continue
                try:
                    slot.process.send_signal(signum)
                except ProcessLookupError:
                    pass
            elif slot.restart_at is not None:
                # A restart that was waiting for its backoff is off: we are shutting down.
                slot.restart_at = None
                slot.ended = True

    def _reap(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.ended:
                continue
            if slot.process is None:
                if slot.restart_at is not None and now >= slot.restart_at and not self._stopping:
                    self._spawn(slot)
                continue
            returncode = slot.process.poll()
            if returncode is None:
                if not slot.caught & _TERM_BIT and not self._stopping:
                    # Until the child has set up its handlers: what _handled_already compares with.
                    slot.caught |= _caught_signals(slot.process.pid)
                continue
            ran_for = now - slot.started_at
            slot.process = None
            if returncode == 0:
                logger.info("worker %s exited normally", slot.worker_id)
                self._state_file(slot).clear()
                slot.ended = True
                continue
            held = self._held_trial(slot)
            record = ChildExit(slot.worker_id, slot.gpu, returncode, held.trial_id if held else None)
            self._exits.append(record)
            if held is not None:
                self._report_held_trial(slot, record, held)
            running = f" while running trial {record.trial_id}" if record.trial_id is not None else ""
            if self._stopping:
                logger.info("worker %s %s while stopping%s", slot.worker_id, record.describe(), running)
                slot.ended = True
                continue
            if returncode == EXIT_WORKER_ID_IN_USE:
                # A restart would claim under the same id again, and take the trial back from the other process.
                logger.error("worker %s stopped: another process uses its id; not restarting it", slot.worker_id)
                slot.ended = slot.gave_up = True
                continue
            if returncode == EXIT_SERVER_UNREACHABLE:
                # The server is down, not the worker: wait it out however long it takes, at the slowest pace.
                slot.restart_at = now + self.max_backoff
                logger.warning("worker %s could not reach the server at %s; starting it again in %.0fs",
                               slot.worker_id, self.server_url, self.max_backoff)
                continue
            if ran_for >= self.healthy_after:
                slot.restarts = 0
            if slot.restarts >= self.max_restarts:
                logger.error("worker %s %s%s; not restarting it after %d restart(s)", slot.worker_id,
                             record.describe(), running, slot.restarts)
                slot.ended = slot.gave_up = True
                continue
            slot.restarts += 1
            delay = min(self.max_backoff, self.restart_backoff * 2 ** (slot.restarts - 1))
            slot.restart_at = now + delay
            logger.warning("worker %s %s after %.1fs%s; restarting it in %.1fs (restart %d of %d)", slot.worker_id,
                           record.describe(), ran_for, running, delay, slot.restarts, self.max_restarts)

    def _held_trial(self, slot: _Slot) -> RunningTrial | None:
        """The trial the child's state file names, if any; the file is removed."""
        state = self._state_file(slot)
        held = state.read()
        state.clear()
        return held

    def _report_held_trial(self, slot: _Slot, record: ChildExit, held: RunningTrial) -> None:
        """Tell the server what became of the trial a dead child was running.

        A crash fails it as retryable (an attempt counted: a trial that kills every worker must run out
        of attempts). A child that died while we were stopping (a second signal, or killed after the
        stop timeout), or one cut off from the server, did nothing wrong: its trial is released.
        """
        trial_id, token = held.trial_id, held.lease_token
        # Few retries: this runs in the supervisor's watch loop, and the lease expires on its own anyway.
        try:
            with Client(self.server_url, timeout=10.0, retries=2, backoff=0.5, token=self._token) as client:
                if self._stopping or record.returncode == EXIT_SERVER_UNREACHABLE:
                    reason = f"worker {slot.worker_id} on {self.host} stopped ({record.cause}) while running it"
                    answer = client.release(trial_id, ReleaseReport(worker_id=slot.worker_id, lease_token=token,
                                                                    reason=reason))
                    logger.info("released %s: %s", held.name, reason)
                else:
                    error = f"worker {slot.worker_id} died: {record.cause}"
                    answer = client.fail(trial_id, FailReport(worker_id=slot.worker_id, lease_token=token,
                                                              error=error, retryable=True, kind=FailureKind.crash))
                    logger.info("reported %s as crashed: %s", held.name, error)
            # Out of attempts, or its sweep ended: no retry will resume from the checkpoint.
            delete_checkpoint_if_finished(answer, held.checkpoint_dir)
        except (LeaseLostError, NotFoundError):
            pass  # a newer claim holds the trial, or the server already moved it on
        except ApiError as error:
            logger.warning("could not report %s to the server (its lease will expire instead): %s",
                           held.name, error)

    def _cleanup(self) -> None:
        for slot in self.slots:
            slot.reserved.release()
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)


def _caught_signals(pid: int) -> int:
    """The signals process `pid` has handlers for, as a mask (bit n-1 for signal n); 0 where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _handled_already(slot: _Slot, signum: int) -> bool:
    """Whether the child caught `signum` before and does not now: its handler ran (an agent's first signal
    replaces it with the default action), so the signal reached it directly."""
    assert slot.process is not None
    bit = 1 << (signum - 1)
    return bool(slot.caught & bit) and not _caught_signals(slot.process.pid) & bit


def run_workers(server: str, gpus: str = "all", cpu_workers: int = 1, idle_exit: float | None = None,
                data_root: Path | None = None, plugins: Sequence[str] = (), trials_per_gpu: int = 1,
                token: str | None = None, gpus_per_trial: int = 1, cpu_devices: int = 1,
                id_prefix: str | None = None) -> int:
    """Start `trials_per_gpu` workers per selected GPU, or per group of `gpus_per_trial` GPUs (or
    `cpu_workers` CPU workers of `cpu_devices` devices each) against `server`; block until done.

    Raises GpuSelectionError (a ValueError) when `gpus` names a GPU this host does not have, when the
    options cannot combine (see `workers.gpus.plan_groups`), or when a GPU's memory is too small to share
    among `trials_per_gpu` workers; AuthError when the server answers but refuses `token`.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [supervisor] %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # `--gpus none` asks neither NVML nor nvidia-smi: on a host whose driver hangs, it is the way out.
    discovered = [] if wants_no_gpu(gpus) else discover_gpus()
    selected = select_gpus(gpus, discovered)
    links = discover_links(selected) if gpus_per_trial > 1 and len(selected) > gpus_per_trial else None
    supervisor = Supervisor(server, selected, cpu_workers=cpu_workers, idle_exit=idle_exit, data_root=data_root,
                            plugins=plugins, trials_per_gpu=trials_per_gpu, token=token,
                            gpus_per_trial=gpus_per_trial, links=links, cpu_devices=cpu_devices, id_prefix=id_prefix)
    if selected:
        print(f"Starting {len(supervisor.slots)} GPU worker(s) for {server}:")
        for slot in supervisor.slots:
            limit = slot.env.get(MEMORY_LIMIT_VARIABLE)
            print(f"  {slot.worker_id} on GPU{'s' if slot.devices > 1 else ''} {slot.gpu}"
                  + (f", {limit} MB" + (" each" if slot.devices > 1 else "") if limit else ""))
    else:
        reason = f"--gpus {gpus}" if discovered or wants_no_gpu(gpus) else "no GPUs found"
        print(f"Starting {cpu_workers} CPU worker(s) for {server} ({reason}):")
        for slot in supervisor.slots:
            print(f"  {slot.worker_id}" + (f" ({slot.devices} devices)" if slot.devices > 1 else ""))
    try:
        _check_server(server, token)
    except AuthError:
        supervisor.stop()  # frees the reserved worker ids; no child was started
        raise
    sys.stdout.flush()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in _FORWARDED} if in_main_thread else {}
    if in_main_thread:
        supervisor.install_signal_handlers()
    supervisor.start()
    try:
        return supervisor.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_server(server: str, token: str | None) -> None:
    # Not fatal: in a compose file or a cluster the workers may well start before the server. A server
    # that answers but refuses the token is: every child would be refused the same way.
    try:
        with Client(server, timeout=5.0, retries=2, backoff=0.5, token=token) as client:
            client.health()
            client.session()
    except AuthError:
        raise
    except ApiError as error:
        print(f"Warning: the server is not answering yet ({error}); the workers will keep trying.")

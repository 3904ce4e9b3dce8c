"""A one-node Slurm cluster for tests: munged, slurmctld and slurmd on this host, all state in one folder.

`SlurmCluster.start(folder)` writes a slurm.conf (this host as the node, its CPUs from nproc, no cgroups:
proctrack/linuxproc and task/none) and a munge key into `folder`, starts the three daemons on free
ports, and waits until the node takes jobs; `stop()` cancels every job and ends the daemons and every
process they started. Daemons, job steps and workers carry `SLURM_CONF=<folder>/slurm.conf` in their
environment, which is how `stop()`, and the next `start()` after a run that could not stop its cluster,
find exactly those processes. `SlurmUnavailable` says why a cluster cannot start here (not installed,
not root, a daemon that does not come up); tests skip with it.

Run it as a script to keep a cluster up for trying `sweeper slurm` by hand:
`python tests/slurm/slurm_cluster.py FOLDER`, then `export SLURM_CONF=FOLDER/slurm.conf`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
KILL_WAIT_SECONDS = 30
"""scancel's SIGTERM comes this long before its SIGKILL: time for a worker to finish its epoch."""

_REGISTRY = Path(tempfile.gettempdir()) / "sweeper-test-slurm"
"""One file per cluster started and not yet stopped, naming its folder and the process that started it."""


class SlurmUnavailable(Exception):
    """Why no test cluster can run on this machine."""


class SlurmCluster:
    def __init__(self, folder: Path):
        self.folder = folder.resolve()
        self.conf = self.folder / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- starting and stopping ----------------------------------------------------------------------

    @classmethod
    def start(cls, folder: Path, cpus: int | None = None) -> SlurmCluster:
        missing = [name for name in (*DAEMONS, *CLIENTS) if _which(name) is None]
        if missing:
            raise SlurmUnavailable(f"Slurm is not installed here ({', '.join(missing)} missing): "
                                   f"apt-get install slurm-wlm munge")
        if os.geteuid() != 0:
            raise SlurmUnavailable("a test Slurm cluster runs slurmd, which needs root")
        clean_up_abandoned()
        cluster = cls(folder)
        cluster._write_config(cpus or max(2, os.cpu_count() or 1))
        _REGISTRY.mkdir(parents=True, exist_ok=True)
        cluster._registration.write_text(f"{cluster.folder}\n{os.getpid()}\n")
        try:
            cluster._start_daemons()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def stop(self) -> None:
        """Cancel every job, end the daemons and whatever they started; safe to call twice."""
        if _which("scancel") and (self.folder / "slurmctld.pid").exists():
            subprocess.run(["scancel", "--full", "--signal=KILL", "--user", str(os.getuid())], env=self.env,
                           capture_output=True, timeout=30)
            subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True, timeout=30)
        _end_processes(self.folder)
        self._registration.unlink(missing_ok=True)

    @property
    def _registration(self) -> Path:
        return _REGISTRY / self.folder.as_posix().strip("/").replace("/", "_")

    def _write_config(self, cpus: int) -> None:
        folder = self.folder
        for sub in ("state", "spool"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        key = folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        folder.chmod(0o700)  # munged refuses a key in a folder that others may write
        controller_port, node_port = free_port(), free_port()
        self.conf.write_text(f"""\
ClusterName=sweepertest
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={controller_port}
SlurmdPort={node_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
KillWait={KILL_WAIT_SECONDS}
MinJobAge=300
SlurmdParameters=config_overrides
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def _start_daemons(self) -> None:
        folder = self.folder
        started = [
            ["munged", "--force", f"--socket={folder}/munge.socket", f"--key-file={folder}/munge.key",
             f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log", f"--seed-file={folder}/munged.seed"],
            ["slurmctld", "-i"],
            ["slurmd", "-N", self.node],
        ]
        for command in started:
            done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise SlurmUnavailable(f"`{' '.join(command[:1])}` did not start ({done.returncode}): "
                                       f"{(done.stderr or done.stdout).strip()[-500:]}{self._log_tails()}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "--noheader", "--format=%t"], env=self.env, capture_output=True,
                                   text=True).stdout.strip()
            if state in ("idle", "mix", "alloc"):
                return
            time.sleep(0.5)
        raise SlurmUnavailable(f"the node never took jobs (sinfo: {state!r}){self._log_tails()}")

    def _log_tails(self) -> str:
        tails = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            log = self.folder / name
            if log.exists():
                tails.append(f"\n--- {name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-8:]))
        return "".join(tails)

    # -- using it -----------------------------------------------------------------------------------

    def run(self, *command: str) -> str:
        """A Slurm client command's output; AssertionError with its error when it fails."""
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{' '.join(command)}: {done.stderr or done.stdout}"
        return done.stdout

    def task_states(self, job: str) -> dict[int, str]:
        """The array's tasks still in the queue, by task id: PENDING, RUNNING, COMPLETING, ..."""
        lines = self.run("squeue", "--array", "--noheader", "--jobs", job, "--format=%i %T").splitlines()
        states = {}
        for line in lines:
            task_id, state = line.split()
            _, _, index = task_id.partition("_")
            if index.isdigit():
                states[int(index)] = state
        return states


def clean_up_abandoned() -> None:
    """End the daemons and jobs of clusters whose starting process ended without stopping them (a test
    run killed, or interrupted past its teardown); a cluster whose process still lives is left alone."""
    if not _REGISTRY.is_dir():
        return
    for registration in _REGISTRY.iterdir():
        try:
            folder, owner = registration.read_text().split()
        except (OSError, ValueError):
            continue
        if _alive(int(owner)):
            continue
        _end_processes(Path(folder))
        registration.unlink(missing_ok=True)


def _end_processes(folder: Path) -> None:
    """SIGTERM, then SIGKILL, every process of the cluster in `folder`: its daemons, steps and jobs."""
    for signum, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        pids = processes_of(folder)
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.1)
        if not pids:
            return


def processes_of(folder: Path) -> list[int]:
    """Pids whose environment names this cluster's slurm.conf, or whose command line names its folder."""
    marker = f"SLURM_CONF={folder}/slurm.conf".encode()
    path = f"{folder}/".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environment = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in environment or path in command:
            if _alive(int(entry)):
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _which(name: str) -> str | None:
    # The daemons live in /usr/sbin, which a non-login shell's PATH may lack.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    where = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="slurm-"))
    try:
        cluster = SlurmCluster.start(where)
    except SlurmUnavailable as error:
        sys.exit(f"no cluster: {error}")
    print(f"export SLURM_CONF={cluster.conf}   # Ctrl-C or SIGTERM stops the cluster", flush=True)
    # Handlers of our own: a shell's background job starts with SIGINT ignored.
    for stopping in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stopping, lambda signum, frame: None)
    signal.pause()
    cluster.stop()

"""The batch script that `sweeper slurm submit` hands to `sbatch`: a job array of sweeper workers.

Rendered from a `WorkerArray`, so it reads (and is tested) without Slurm. Each array task runs one
`sweeper worker` on what Slurm allocated to it: its GPUs (`--gres=gpu:N`, named by Slurm in
`CUDA_VISIBLE_DEVICES`) or, with no GPUs, one CPU worker. The batch shell `exec`s the worker
supervisor, so the signal that `--signal=B:TERM@<lead>` sends to the batch shell before the time limit
reaches the supervisor itself, which passes it to its workers: each finishes its epoch, hands its trial
back and exits 0, and another task resumes the trial from its checkpoint.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["JOB_ID_PATTERN", "TASK_ID_PREFIX", "WorkerArray", "task_of_worker"]

TASK_ID_PREFIX = "slurm-"
"""Worker ids of an array task start `slurm-<array job id>_<task id>-`: the workers list names the task."""

JOB_ID_PATTERN = re.compile(r"[0-9]+")
_WORKER_ID = re.compile(rf"{TASK_ID_PREFIX}(?P<job>[0-9]+)_(?P<task>[0-9]+)-")
# Slurm's time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]].
_TIME_LIMIT = re.compile(r"(\d+(:\d{1,2}){0,2}|\d+-\d+(:\d{1,2}){0,2}|UNLIMITED|INFINITE)")
_PARTITION = re.compile(r"[A-Za-z0-9_.,-]+")
_JOB_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


def task_of_worker(worker_id: str) -> tuple[str, int] | None:
    """The (array job id, task id) a worker id names, or None for a worker started outside Slurm."""
    match = _WORKER_ID.match(worker_id)
    return (match["job"], int(match["task"])) if match else None


@dataclass(frozen=True)
class WorkerArray:
    """What one submission asks of Slurm, and what each of its tasks runs; ValueError names the bad option."""

    server: str
    worker_command: list[str]
    """How a node starts the `sweeper` command: the installed one, or this Python with `-m cli`."""
    output_dir: Path
    tasks: int = 1
    max_running: int | None = None
    gpus_per_trial: int | None = 1
    """GPUs per array task, all for one trial at a time; None: a CPU task with one CPU worker."""
    cpus_per_task: int | None = None
    partition: str | None = None
    time_limit: str | None = None
    signal_lead: int = 300
    """Seconds before the time limit at which the batch shell gets SIGTERM: at least an epoch's length."""
    job_name: str = "sweeper-workers"
    idle_exit: float = 600.0
    token_file: Path | None = None
    token_from_environment: bool = False
    data_root: Path | None = None
    plugins: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    """Shell lines run before the worker (`module load cuda`, `source venv/bin/activate`)."""
    sbatch_lines: list[str] = field(default_factory=list)
    """Extra `#SBATCH` options, each as sbatch takes it (`--account=ml`, `--qos=low`)."""

    def __post_init__(self) -> None:
        if self.tasks < 1:
            raise ValueError(f"--tasks: `tasks >= 1` must hold, but got {self.tasks}")
        if self.max_running is not None and self.max_running < 1:
            raise ValueError(f"--max-running: `max_running >= 1` must hold, but got {self.max_running}")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 1:
            raise ValueError(f"--gpus-per-trial: a task needs at least 1 GPU (or none, for CPU tasks), "
                             f"but got {self.gpus_per_trial}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise ValueError(f"--cpus-per-task: `cpus_per_task >= 1` must hold, but got {self.cpus_per_task}")
        if self.signal_lead < 0 or self.signal_lead > 65535:
            raise ValueError(f"--signal-lead: Slurm takes 0 to 65535 seconds, but got {self.signal_lead}")
        if self.idle_exit < 0:
            raise ValueError(f"--idle-exit: `idle_exit >= 0` must hold, but got {self.idle_exit}")
        if self.partition is not None and not _PARTITION.fullmatch(self.partition):
            raise ValueError(f"--partition: {self.partition!r} is not a partition name (letters, digits, _ . - and "
                             f"commas between names)")
        if self.time_limit is not None and not _TIME_LIMIT.fullmatch(self.time_limit):
            raise ValueError(f"--time: {self.time_limit!r} is none of Slurm's formats: minutes, "
                             f"minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]]")
        if not _JOB_NAME.fullmatch(self.job_name):
            raise ValueError(f"--job-name: {self.job_name!r} may hold letters, digits and _ . + - only")
        if self.token_file is not None and self.token_from_environment:
            raise ValueError("the worker token: from --token-file or from the environment, not both")
        for line in self.sbatch_lines:
            if not line.startswith("-") or "\n" in line or "\r" in line:
                raise ValueError(f"--sbatch {line!r}: give one sbatch option per line, as `--name=value`")
        for line in self.setup:
            if "\n" in line or "\r" in line:
                raise ValueError(f"--setup {line!r}: give one shell line each")

    @property
    def array(self) -> str:
        """`--array`'s value: task ids 0 to tasks-1, at most max_running of them at once."""
        return f"0-{self.tasks - 1}" + (f"%{self.max_running}" if self.max_running else "")

    def directives(self) -> list[str]:
        """The `#SBATCH` options, in the order the script lists them."""
        options = [f"--job-name={self.job_name}", f"--array={self.array}",
                   f"--output={self.output_dir / '%x-%A_%a.out'}"]
        if self.gpus_per_trial is not None:
            options.append(f"--gres=gpu:{self.gpus_per_trial}")
        if self.cpus_per_task is not None:
            options.append(f"--cpus-per-task={self.cpus_per_task}")
        if self.partition is not None:
            options.append(f"--partition={self.partition}")
        if self.time_limit is not None:
            options.append(f"--time={self.time_limit}")
        # B: the batch shell only, which is the supervisor (exec): it forwards it to each worker once.
        options.append(f"--signal=B:TERM@{self.signal_lead}")
        return [*options, *self.sbatch_lines]

    def worker_arguments(self) -> list[str]:
        """The `sweeper worker` command line of a task, as shell words (its variables expand on the node)."""
        words = [shlex.join([*self.worker_command, "worker"]), f"--server {shlex.quote(self.server)}"]
        if self.gpus_per_trial is None:
            words.append("--gpus none --cpu-workers 1")
        else:
            # Slurm names the task's GPUs; NVML alone would show every GPU of the node.
            words.append('--gpus "${CUDA_VISIBLE_DEVICES:?Slurm allocated no GPU to this task}"')
            if self.gpus_per_trial > 1:
                words.append(f"--gpus-per-trial {self.gpus_per_trial}")
        words.append(f'--id-prefix "{TASK_ID_PREFIX}${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"')
        words.append(f"--idle-exit {self.idle_exit:g}")
        if self.token_file is not None:
            words.append(f"--token-file {shlex.quote(str(self.token_file))}")
        if self.data_root is not None:
            words.append(f"--data-root {shlex.quote(str(self.data_root))}")
        if self.plugins:
            words.append(f"--plugins {shlex.quote(','.join(self.plugins))}")
        return words

    def render(self) -> str:
        """The whole batch script."""
        lines = ["#!/bin/bash", *(f"#SBATCH {option}" for option in self.directives()), "#",
                 "# Written by `sweeper slurm submit`. Each array task runs one sweeper worker against",
                 f"# {self.server} on what Slurm allocated to it. SIGTERM (from --signal, {self.signal_lead} s "
                 "before the",
                 "# time limit, or from scancel) makes the workers finish their epoch, hand their trials back",
                 f"# and exit; a task with no trial to run for {self.idle_exit:g} s ends by itself.",
                 "set -eo pipefail"]
        if self.token_from_environment:
            lines.append(': "${SWEEPER_TOKEN:?the worker token did not reach this task: submit with '
                         'SWEEPER_WORKER_TOKEN set, or use --token-file}"')
        lines += self.setup
        lines += ["echo \"sweeper worker: array task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on "
                  "$(hostname)\"",
                  "# exec: the batch shell becomes the supervisor, so the signals Slurm sends it reach the workers.",
                  "exec " + " \\\n    ".join(self.worker_arguments()), ""]
        return "\n".join(lines)

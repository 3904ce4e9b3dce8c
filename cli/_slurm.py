"""`sweeper slurm`: workers as a Slurm job array, their tasks beside the trials they run, and ending them.

`submit` renders the batch script (cli._slurm_script) and hands it to `sbatch`; `status` joins
`squeue`'s view of the array with the server's workers list, whose ids name the array task
(`slurm-<job>_<task>-gpu0`); `cancel` ends the array gracefully: pending tasks are removed and running
ones get SIGTERM in their batch shell, so their workers finish the epoch and hand their trials back.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Optional
from urllib.parse import urlsplit

import typer
from rich.table import Table

from cli import _console
from cli._common import (DEFAULT_SERVER, Plugins, Server, Token, TokenFile, console, errors, fail,
                         read_token_file, server_client)
from cli._slurm_script import JOB_ID_PATTERN, WorkerArray, task_of_worker

WORKER_TOKEN_VARIABLE = "SWEEPER_WORKER_TOKEN"
"""Where `submit` finds the worker token in the environment: the name the server reads it from too, so that
SWEEPER_TOKEN, which the client commands send, can hold the admin token, which never goes to the nodes."""

JobId = Annotated[str, typer.Argument(help="The array's job id, as `sweeper slurm submit` printed it.")]

slurm = typer.Typer(help="Workers as a Slurm job array: submit it, see which task runs which trial, end it.",
                    no_args_is_help=True)


@slurm.command()
def submit(
    server: Server = DEFAULT_SERVER,
    tasks: Annotated[int, typer.Option(min=1, help="Array tasks: one worker each, on its own GPU(s).")] = 1,
    max_running: Annotated[Optional[int], typer.Option(
        min=1, show_default=False, help="At most this many tasks at once (`--array=0-N%M`).")] = None,
    gpus_per_trial: Annotated[str, typer.Option(
        help="GPUs per array task (`--gres=gpu:N`), all training one trial at a time; `none` for CPU tasks, "
             "one CPU worker each.")] = "1",
    cpus_per_task: Annotated[Optional[int], typer.Option(min=1, show_default=False,
                                                         help="CPUs per task (data loading).")] = None,
    partition: Annotated[Optional[str], typer.Option(show_default=False, help="The Slurm partition.")] = None,
    time: Annotated[Optional[str], typer.Option(
        show_default=False, help="Each task's time limit, in Slurm's format (4:00:00, 1-12).")] = None,
    signal_lead: Annotated[int, typer.Option(
        min=0, max=65535, metavar="SECONDS",
        help="SIGTERM this long before the time limit: more than an epoch lasts, so the workers finish it and "
             "hand their trials back before Slurm kills the task.")] = 300,
    idle_exit: Annotated[float, typer.Option(
        min=0, metavar="SECONDS", help="A task with no trial to run for this long ends, freeing its GPU.")] = 600,
    output: Annotated[Path, typer.Option(help="Folder of the tasks' logs (`<job-name>-<job>_<task>.out`).")]
    = Path("slurm-logs"),
    job_name: Annotated[str, typer.Option(help="The array's job name.")] = "sweeper-workers",
    sbatch: Annotated[Optional[list[str]], typer.Option(
        "--sbatch", metavar="OPTION", show_default=False,
        help="An extra #SBATCH option, as sbatch takes it: --sbatch=--account=ml (repeat).")] = None,
    setup: Annotated[Optional[list[str]], typer.Option(
        metavar="LINE", show_default=False,
        help="A shell line each task runs before the worker: --setup 'module load cuda' (repeat).")] = None,
    worker_command: Annotated[Optional[str], typer.Option(
        show_default=False,
        help="How a node starts sweeper (default: this Python, `-m cli`, which a shared file system shows "
             "every node).")] = None,
    token_file: TokenFile = None,
    data_root: Annotated[Optional[Path], typer.Option(
        show_default=False, help="Folder on the nodes that file datasets are read from (the workers' --data-root).")]
    = None,
    plugins: Plugins = None,
    dry_run: Annotated[bool, typer.Option(help="Print the batch script; submit nothing.")] = False,
) -> None:
    """Submit workers as a job array: each task runs `sweeper worker` on its GPU(s) against --server.

    The worker token comes from --token-file (mode 600: the tasks read the file) or from SWEEPER_WORKER_TOKEN
    (passed in the job's environment), never from the command line.
    """
    if token_file is not None:
        read_token_file(token_file)  # checked here too: a bad file would fail every task
    worker_token = None if token_file is not None else os.environ.get(WORKER_TOKEN_VARIABLE) or None
    try:
        array = WorkerArray(
            server=server, worker_command=shlex.split(worker_command) if worker_command else
            [sys.executable, "-m", "cli"], output_dir=output.absolute(), tasks=tasks, max_running=max_running,
            gpus_per_trial=_gpus(gpus_per_trial), cpus_per_task=cpus_per_task, partition=partition,
            time_limit=time, signal_lead=signal_lead, job_name=job_name, idle_exit=idle_exit,
            token_file=token_file.absolute() if token_file else None, token_from_environment=worker_token is not None,
            data_root=data_root.absolute() if data_root else None, plugins=_split(plugins), setup=setup or [],
            sbatch_lines=sbatch or [])
    except ValueError as error:
        raise fail(str(error), code=2) from None
    if dry_run:
        print(array.render(), end="")
        return
    if _loopback(server):
        errors.print(f"[yellow]warning:[/yellow] {server} is a loopback address: only tasks on this host reach it; "
                     f"give --server the address the compute nodes use", highlight=False, soft_wrap=True)
    if token_file is None and worker_token is None:
        errors.print(f"[yellow]note:[/yellow] no worker token (--token-file or {WORKER_TOKEN_VARIABLE}): the workers "
                     f"call the server without one", highlight=False, soft_wrap=True)
    output.mkdir(parents=True, exist_ok=True)  # sbatch does not create it; a task with no log folder fails unseen
    # sbatch passes its environment on to the tasks: no token of this shell goes with it (the admin token
    # least of all), only the worker token, under the name `sweeper worker` reads.
    env = {key: value for key, value in os.environ.items() if not (key.startswith("SWEEPER_") and "TOKEN" in key)}
    if worker_token is not None:
        env["SWEEPER_TOKEN"] = worker_token
    answer = _slurm_command(["sbatch", "--parsable"], input=array.render(), env=env)
    job = answer.strip().split(";")[0]
    console.print(f"Submitted array job {job}: {tasks} task(s) of sweeper workers for {server}")
    console.print(f"Follow them: sweeper slurm status {job}; logs in {array.output_dir}/{job_name}-{job}_*.out",
                  highlight=False, soft_wrap=True)


@slurm.command()
def status(job: JobId, server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """Show the array's tasks: their Slurm state and node, their workers, and the trial each one runs."""
    _check_job(job)
    # A job that left the queue altogether is "invalid" to squeue: none of its tasks is queued.
    rows = _job_command(["squeue", "--array", "--noheader", "--jobs", job, "--format", "%i|%T|%N|%M|%r"]) or ""
    tasks: dict[int, dict[str, str]] = {}
    for line in rows.splitlines():
        task_id, state, node, elapsed, reason = (line.split("|") + [""] * 5)[:5]
        _, _, index = task_id.partition("_")
        if index.isdigit():
            tasks[int(index)] = {"state": state, "node": node or f"({reason})", "elapsed": elapsed}
    workers = _array_workers(job, server, token)
    table = Table(title=f"Array job {job}: {len(tasks)} task(s) in Slurm's queue, {len(workers)} worker(s) seen")
    for column in ("task", "slurm", "node", "time", "worker", "worker state", "sweep/trial"):
        table.add_column(column)
    for index in sorted(set(tasks) | {task for task, _ in workers}):
        task = tasks.get(index, {"state": "ENDED", "node": "", "elapsed": ""})
        mine = [worker for number, worker in workers if number == index] or [None]
        for worker in mine:
            table.add_row(f"{job}_{index}", task["state"], task["node"], task["elapsed"], *_worker_cells(worker))
    console.print(table)


@slurm.command()
def cancel(
    job: JobId,
    task: Annotated[Optional[list[int]], typer.Option(
        min=0, show_default=False, help="Only this array task (repeat); all of them when left out.")] = None,
    sweep: Annotated[Optional[int], typer.Option(
        show_default=False, help="Cancel this sweep on the server first (needs the admin token).")] = None,
    now: Annotated[bool, typer.Option(
        help="Plain scancel: SIGTERM to every process, SIGKILL after the cluster's KillWait.")] = False,
    server: Server = DEFAULT_SERVER,
    token: Token = None,
) -> None:
    """End the array's tasks: pending ones are removed, running ones get SIGTERM in their batch shell, so
    their workers finish the epoch, hand their trials back and exit."""
    _check_job(job)
    if sweep is not None:
        with server_client(server, token) as client:
            ended = client.cancel_sweep(sweep)
        console.print(f"Sweep {ended['id']} {ended['name']}: {ended['status']}")
    targets = [f"{job}_{index}" for index in task] if task else [job]
    nothing_to_cancel = f"Nothing to cancel: {', '.join(targets)} ended already"
    if now:
        done = _job_command(["scancel", *targets])
        console.print(nothing_to_cancel if done is None else
                      f"Cancelled {', '.join(targets)}: workers hand their trials back, or are killed after KillWait",
                      highlight=False, soft_wrap=True)
        return
    if _job_command(["scancel", "--state=PENDING", *targets]) is None \
            or _job_command(["scancel", "--state=RUNNING", "--batch", "--signal=TERM", *targets]) is None:
        console.print(nothing_to_cancel, highlight=False)
        return
    console.print(f"Sent SIGTERM to {', '.join(targets)}: their workers finish the epoch, hand their trials back "
                  f"and exit; pending tasks were removed", highlight=False, soft_wrap=True)


def _gpus(value: str) -> int | None:
    if value.strip().lower() == "none":
        return None
    if not value.strip().isdigit() or int(value) < 1:
        raise fail(f"--gpus-per-trial: {value!r} is neither a number of GPUs (1 or more) nor `none`", code=2)
    return int(value)


def _split(plugins: list[str] | None) -> list[str]:
    return [name.strip() for entry in plugins or [] for name in entry.split(",") if name.strip()]


def _loopback(server: str) -> bool:
    host = urlsplit(server).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_job(job: str) -> None:
    if not JOB_ID_PATTERN.fullmatch(job):
        raise fail(f"job id {job!r}: give the array's number, as `sweeper slurm submit` printed it", code=2)


ENDED_JOB_ANSWERS = ("invalid job id", "already completing or completed")
"""How Slurm's commands answer for a job that has ended: purged from slurmctld's memory, or not yet."""


def _slurm_command(command: list[str], input: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run a Slurm client command; its output, or exit 1 with Slurm's own error message."""
    done = _run(command, input, env)
    if done.returncode != 0:
        raise _failed(command, done)
    return done.stdout


def _job_command(command: list[str]) -> str | None:
    """Run a Slurm client command about one job; its output, None when the job has ended."""
    done = _run(command)
    if done.returncode == 0:
        return done.stdout
    if any(answer in done.stderr.lower() for answer in ENDED_JOB_ANSWERS):
        return None
    raise _failed(command, done)


def _run(command: list[str], input: str | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which(command[0], path=(env or os.environ).get("PATH")) is None:
        raise fail(f"`{command[0]}` is not installed here: run `sweeper slurm` where Slurm's commands are "
                   f"(a login node)")
    return subprocess.run(command, input=input, env=env, capture_output=True, text=True)


def _failed(command: list[str], done: subprocess.CompletedProcess[str]) -> typer.Exit:
    return fail(f"`{shlex.join(command)}` failed: {done.stderr.strip() or done.stdout.strip()}")


def _array_workers(job: str, server: str, token: str | None) -> list[tuple[int, dict[str, Any]]]:
    """The server's workers that this array's tasks started, with their task ids; none when it cannot say."""
    from sweeper import SweeperError
    from sweeper.client import Client

    try:
        with Client(server, token=token, retries=0, timeout=10.0) as client:
            workers = client.list_workers(limit=10_000)["data"]
    except SweeperError as error:
        errors.print(f"[yellow]warning:[/yellow] no workers from {server}: {error}", highlight=False, soft_wrap=True)
        return []
    found = []
    for worker in workers:
        task = task_of_worker(worker["id"])
        if task is not None and task[0] == job:
            found.append((task[1], worker))
    return found


def _worker_cells(worker: dict[str, Any] | None) -> tuple[str, str, str]:
    if worker is None:
        return "", "", ""
    state = worker["state"]
    held = "" if worker.get("trial_id") is None else (
        f"{worker['sweep_id']}/{worker['trial_number']}" if worker.get("trial_number") else str(worker["trial_id"]))
    return worker["id"], f"[{_console.WORKER_STATE_STYLES.get(state, 'default')}]{state}[/]", held

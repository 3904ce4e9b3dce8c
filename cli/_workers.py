"""`sweeper worker` and `sweeper run`: the commands that train, on this machine's GPUs or CPU.

The workers (and with them TensorFlow) and the server are imported inside the commands.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli import _console
from cli._common import (DEFAULT_SERVER, CpuDevices, CpuWorkers, DatabaseUrl, DataRoot, Gpus, GpusPerTrial, Logdir,
                         Plugins, Server, SpecFile, Token, TokenFile, TrialsPerGpu, console, fail, load_plugin_modules,
                         load_spec_file, one_token, require_file_system)
from sweeper import SweeperError
from sweeper.log_location import is_url

_ID_PREFIX = re.compile(r"[A-Za-z0-9_.:@+-]{1,100}")


def worker(
    server: Server = DEFAULT_SERVER,
    gpus: Gpus = "all",
    cpu_workers: CpuWorkers = 1,
    trials_per_gpu: TrialsPerGpu = 1,
    gpus_per_trial: GpusPerTrial = 1,
    cpu_devices: CpuDevices = 1,
    data_root: DataRoot = Path("data"),
    plugins: Plugins = None,
    token: Token = None,
    token_file: TokenFile = None,
    id_prefix: Annotated[Optional[str], typer.Option(
        envvar="SWEEPER_WORKER_ID_PREFIX", show_default=False,
        help="What the worker ids start with instead of the host name (`<prefix>-gpu0`): `sweeper slurm` gives "
             "each array task's, `slurm-<job>_<task>`.")] = None,
    idle_exit: Annotated[Optional[float], typer.Option(
        min=0, show_default=False, metavar="SECONDS",
        help="Each worker exits after this long without a trial, and the command once all have (default: wait for "
             "work forever).")] = None,
) -> None:
    """Start one worker process per GPU (or group of --gpus-per-trial GPUs), or --trials-per-gpu sharing each
    (CPU workers when there is none)."""
    from workers.supervisor import run_workers

    token = one_token(token, token_file)
    if id_prefix is not None and not _ID_PREFIX.fullmatch(id_prefix):
        raise fail(f"--id-prefix {id_prefix!r}: use 1 to 100 letters, digits and _ . : @ + -", code=2)
    modules = load_plugin_modules(plugins)
    try:
        raise typer.Exit(run_workers(server=server, gpus=gpus, cpu_workers=cpu_workers, data_root=data_root,
                                     plugins=modules, trials_per_gpu=trials_per_gpu, token=token,
                                     gpus_per_trial=gpus_per_trial, cpu_devices=cpu_devices,
                                     id_prefix=id_prefix, idle_exit=idle_exit))
    except (ValueError, SweeperError) as error:  # no such GPU; the server refuses the token
        raise fail(str(error), code=2) from None


def run(
    file: SpecFile,
    database_url: DatabaseUrl = "sqlite:///sweeper.db",
    logdir: Logdir = "runs",
    gpus: Gpus = "all",
    cpu_workers: CpuWorkers = 1,
    trials_per_gpu: TrialsPerGpu = 1,
    gpus_per_trial: Annotated[Optional[int], typer.Option(
        min=1, max=64, help="GPUs per worker (default: the spec's train.gpus_per_trial); see `sweeper worker`.",
        show_default=False)] = None,
    cpu_devices: CpuDevices = 1,
    data_root: DataRoot = Path("data"),
    plugins: Plugins = None,
) -> None:
    """Server, workers and sweep in one command on this machine, ending with the best trial."""
    from api.server import start_in_thread
    from api.settings import Settings
    from sweeper.client import Client
    from workers.gpus import discover_gpus, discover_links, plan_groups, select_gpus, wants_no_gpu
    from workers.supervisor import Supervisor

    modules = load_plugin_modules(plugins)
    spec = load_spec_file(file)
    require_file_system(logdir)
    needed = spec.train.gpus_per_trial
    group = needed if gpus_per_trial is None else gpus_per_trial
    try:
        if group < needed:
            raise ValueError(f"{file}: train.gpus_per_trial is {needed}, but --gpus-per-trial {group} gives each "
                             f"worker fewer GPUs, so no worker could run its trials")
        chosen = select_gpus(gpus, [] if wants_no_gpu(gpus) else discover_gpus())
        links = discover_links(chosen) if group > 1 and len(chosen) > group else None
        # Impossible combinations, or a GPU too small to share: say so before starting anything.
        plan_groups(chosen, trials_per_gpu=trials_per_gpu, gpus_per_trial=group if chosen else needed,
                    cpu_devices=cpu_devices, links=links)
    except ValueError as error:
        raise fail(str(error), code=2) from None
    # On loopback and for this command alone: no tokens, even when SWEEPER_ADMIN_TOKEN is set for `serve`.
    server = start_in_thread(Settings(host="127.0.0.1", port=0, database_url=database_url, logdir=logdir,
                                      admin_token=None, worker_token=None))
    # Beside the logs when they are a local folder; an object store takes no appending log file.
    worker_log = Path("workers.log") if is_url(logdir) else Path(logdir) / "workers.log"
    # The workers write to a file: the terminal belongs to the progress bar.
    supervisor = Supervisor(server.url, gpus=chosen, cpu_workers=cpu_workers, output=worker_log,
                            data_root=data_root, plugins=modules, trials_per_gpu=trials_per_gpu,
                            gpus_per_trial=group if chosen else 1, links=links, cpu_devices=cpu_devices)
    try:
        with Client(server.url) as client:
            sweep = client.create_sweep(spec.to_json())
            where = (f"{len(chosen)} GPU(s)" + (f" in groups of {group}" if group > 1 else "")
                     + (f", {trials_per_gpu} trials each" if trials_per_gpu > 1 else "")
                     if chosen else f"{cpu_workers} CPU worker(s)"
                     + (f" of {cpu_devices} devices" if cpu_devices > 1 else ""))
            console.print(f"Sweep {sweep['id']} {sweep['name']}: {_console.search_size(sweep)}, on {where} "
                          f"(worker log: {worker_log})")
            supervisor.start()
            sweep = _console.watch(client, sweep["id"], console)
            supervisor.stop()  # before the summary, so the workers' goodbyes do not follow it
            trials = client.list_trials(sweep["id"])["data"] if sweep.get("pareto_front") else None
            _console.summary(sweep, logdir, console, trials)
    except SweeperError as error:
        raise fail(str(error)) from None
    finally:
        supervisor.stop()
        server.stop()
    if sweep["status"] in _console.UNSUCCESSFUL:
        raise typer.Exit(1)

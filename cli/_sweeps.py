"""The commands about sweeps: submit, check, status, pause, resume, cancel, workers, and tensorboard.

All but `check` and `tensorboard` talk to a server over HTTP through `sweeper.client`, so they never
load FastAPI or TensorFlow.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from cli import _console
from cli._common import (DEFAULT_SERVER, Logdir, Plugins, Server, SpecFile, Token, console, fail, load_plugin_modules,
                         load_spec_file, server_client)
from sweeper import log_files, make_strategy
from sweeper.log_location import reader_flags, sweep_dir

SweepId = Annotated[int, typer.Argument(help="The sweep's id.")]


def submit(
    file: SpecFile,
    server: Server = DEFAULT_SERVER,
    wait: Annotated[bool, typer.Option(help="Show progress until the sweep ends; exit 1 if it failed or was "
                                            "cancelled.")] = False,
    logdir: Logdir = "runs",
    plugins: Plugins = None,
    token: Token = None,
) -> None:
    """Submit a sweep spec to the server."""
    # Only for the local check of the spec: a plugin module's names must be known here too.
    load_plugin_modules(plugins)
    spec = load_spec_file(file)
    from sweeper.client import ApiError, ServerUnavailableError

    with server_client(server, token) as client:
        try:
            sweep = client.create_sweep(spec.to_json())
        except ServerUnavailableError:
            raise
        except ApiError as error:  # the server refused the spec: the file is at fault
            raise fail(f"{file}: {error}", code=2) from None
        console.print(f"Created sweep {sweep['id']} {sweep['name']}: {_console.search_size(sweep)}")
        if not wait:
            flag = "" if server == DEFAULT_SERVER else f" --server {server}"
            console.print(f"Follow it: sweeper status {sweep['id']}{flag}, {client.base_url}/#/sweeps/{sweep['id']}, "
                          f"or submit with --wait for a progress bar", highlight=False, soft_wrap=True)
            return
    with server_client(server, token, patient=True) as client:
        ended = _console.watch(client, sweep["id"], console)
        trials = client.list_trials(sweep["id"])["data"] if ended.get("pareto_front") else None
        _console.summary(ended, logdir, console, trials)
    if ended["status"] in _console.UNSUCCESSFUL:
        raise typer.Exit(1)


def check(file: SpecFile) -> None:
    """Validate a sweep spec and show how large its search is, without a server."""
    spec = load_spec_file(file)
    strategy = make_strategy(spec)
    console.print(f"{file}: valid; " + _console.search_size(
        {"spec": spec.to_json(), "space_size": strategy.size, "total_trials": strategy.total})
        + _console.stopping_text(spec.to_json()))


def status(
    sweep_id: Annotated[Optional[int], typer.Argument(help="A sweep id; all sweeps when left out.")] = None,
    sort: Annotated[str, typer.Option(
        help="Order of a sweep's trials: number, objective (best first), or a metric or hparam name.")] = "number",
    top: Annotated[Optional[int], typer.Option(
        min=1, show_default=False, help="Only the first N trials in that order (by objective unless --sort).")] = None,
    server: Server = DEFAULT_SERVER,
    token: Token = None,
) -> None:
    """Show all sweeps, or one sweep's trials."""
    with server_client(server, token) as client:
        if sweep_id is None:
            console.print(_console.sweeps_table(client.list_sweeps(limit=100, offset=0)["data"]))
            return
        sweep = client.get_sweep(sweep_id)
        if top is not None and sort == "number":
            sort = "objective"
        order = _trial_order(sweep, sort)
        trials = client.list_trials(sweep_id, sort=order, limit=top)["data"]
        _console.print_trials(console, sweep, trials, shown=sort)


def _trial_order(sweep: dict[str, Any], sort: str) -> str:
    """The API's `sort` for --sort: number is the search order, a name is an hparam's or else a metric's."""
    if sort in ("number", "index"):
        return "index"
    if sort == "objective":
        return "objective"
    if sort in sweep["spec"]["hparams"]:
        return f"hparams.{sort}"
    return f"metrics.{sort}"


def pause_sweep(sweep_id: SweepId, server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """Stop handing out a sweep's trials; its running trials finish normally."""
    sweep = _control_sweep(server, token, lambda client: client.pause_sweep(sweep_id))
    running = sweep["trial_counts"]["running"]
    console.print(f"Sweep {sweep['id']} {sweep['name']}: {sweep['status']}"
                  + (f"; {running} running trial(s) will finish" if running else ""))


def resume_sweep(sweep_id: SweepId, server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """Hand out a paused sweep's trials again."""
    sweep = _control_sweep(server, token, lambda client: client.resume_sweep(sweep_id))
    console.print(f"Sweep {sweep['id']} {sweep['name']}: {sweep['status']}")


def cancel_sweep(sweep_id: SweepId, server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """End a sweep: pending trials are cancelled, running ones stop at their next heartbeat."""
    sweep = _control_sweep(server, token, lambda client: client.cancel_sweep(sweep_id))
    running = sweep["trial_counts"]["running"]
    console.print(f"Sweep {sweep['id']} {sweep['name']}: {sweep['status']}"
                  + (f"; {running} running trial(s) stop at their next heartbeat" if running else ""))


def extend_sweep(sweep_id: SweepId,
                 max_trials: Annotated[int, typer.Option("--max-trials", min=1,
                                                         help="The sweep's trials in all, more than it has.")],
                 server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """Give a sweep more trials: a completed or failed one runs again, and an adaptive search goes on from its
    results."""
    sweep = _control_sweep(server, token, lambda client: client.extend_sweep(sweep_id, max_trials))
    console.print(f"Sweep {sweep['id']} {sweep['name']}: {sweep['status']}, {sweep['total_trials']} trials")


def _control_sweep(server: str, token: str | None, call: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    with server_client(server, token) as client:
        return call(client)


def list_workers(server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """Show every worker the server has seen: host, GPU, state (idle, busy, lost) and trial."""
    with server_client(server, token) as client:
        console.print(_console.workers_table(client.list_workers()["data"]))


def tensorboard(
    sweep_id: Annotated[int, typer.Argument(help="The sweep to show.")],
    logdir: Logdir = "runs",
    port: Annotated[int, typer.Option(help="TensorBoard's port.")] = 6006,
    host: Annotated[str, typer.Option(help="Address TensorBoard binds.")] = "127.0.0.1",
) -> None:
    """Start TensorBoard on one sweep's folder, so its HParams dashboard shows exactly that sweep."""
    folder = sweep_dir(logdir, sweep_id)
    try:
        found = log_files.isdir(folder)
    except OSError as error:
        raise fail(f"cannot read the logs of sweep {sweep_id} in {folder}: {error}", code=2) from None
    if not found:
        raise fail(f"no logs for sweep {sweep_id} in {folder}", code=2)
    console.print(f"TensorBoard for sweep {sweep_id}: http://{host}:{port}/#hparams")
    command = [sys.executable, "-m", "cli._quiet_tensorboard", "--logdir", folder, "--host", host, "--port", str(port),
               *reader_flags(folder)]
    sys.stdout.flush()
    # This process becomes TensorBoard: Ctrl-C or a SIGTERM reaches it directly, and stopping
    # `sweeper tensorboard` can never leave an orphaned TensorBoard behind.
    os.execve(sys.executable, command, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})

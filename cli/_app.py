"""The `sweeper` command line: the composition root that wires the core, the server and the workers.

The server (api) and the workers are imported inside the commands that need them, so that `sweeper
submit` on a laptop never loads FastAPI or TensorFlow.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from sweeper import _console
from sweeper._errors import SpecError, SweeperError
from sweeper._spec import load_spec
from sweeper.log_location import is_url, reader_flags, sweep_dir

app = typer.Typer(help="Hyperparameter sweeps for tf.keras, with TensorBoard HParams as the result view.",
                  no_args_is_help=True, add_completion=False)
console = Console()
errors = Console(stderr=True)

Server = Annotated[str, typer.Option(envvar="SWEEPER_SERVER", help="URL of the sweeper server.")]
Token = Annotated[Optional[str], typer.Option(
    envvar="SWEEPER_TOKEN", show_default=False,
    help="The server's token: the admin token (the worker token for `sweeper worker`). Prefer the environment "
         "variable: a flag shows in `ps`.")]
Logdir = Annotated[str, typer.Option(envvar="SWEEPER_LOGDIR", help="Folder of the TensorBoard logs and checkpoints, or "
                                                                 "an object-store URL like gs://bucket/prefix.")]
DatabaseUrl = Annotated[str, typer.Option(envvar="SWEEPER_DATABASE_URL", help="SQLAlchemy database URL.")]
Gpus = Annotated[str, typer.Option(help="GPUs to use: all, none, or indices like 0,2.")]
CpuWorkers = Annotated[int, typer.Option(min=1, help="CPU worker processes when no GPU is used.")]
TrialsPerGpu = Annotated[int, typer.Option(min=1, help="Worker processes per GPU, each limited to an equal share "
                                                       "of its memory (1: one worker, growing as it needs).")]
DataRoot = Annotated[Path, typer.Option(envvar="SWEEPER_DATA_ROOT",
                                        help="Folder that file datasets (npz:PATH, images:PATH) are read from.")]
Plugins = Annotated[Optional[list[str]], typer.Option(
    "--plugins", envvar="SWEEPER_PLUGINS", metavar="MODULE",
    help="Operator module(s) registering models and datasets (repeat, or comma-separated); see docs/plugins.md.")]
DEFAULT_SERVER = "http://127.0.0.1:8000"


def _fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def _load_plugins(plugins: list[str] | None) -> list[str]:
    """Import the operator's plugin modules (and entry points) now, so a broken one stops the command here."""
    from sweeper.plugins import PluginError, load_plugins

    try:
        return load_plugins(plugins or [])
    except PluginError as error:
        raise _fail(str(error), code=2) from None


def _load(path: Path):  # noqa: ANN202 - SweepSpec, imported lazily above
    try:
        return load_spec(path)
    except SpecError as error:
        raise _fail(str(error), code=2) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="SWEEPER_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="SWEEPER_PORT")] = 8000,
    database_url: DatabaseUrl = "sqlite:///sweeper.db",
    logdir: Logdir = "runs",
    plugins: Plugins = None,
    lease_seconds: Annotated[Optional[float], typer.Option(
        envvar="SWEEPER_LEASE_SECONDS", help="Seconds a silent worker keeps its trial (default 60).")] = None,
    heartbeat_seconds: Annotated[Optional[float], typer.Option(
        envvar="SWEEPER_HEARTBEAT_SECONDS", help="Seconds between a worker's heartbeats (default: lease / 6, at "
                                                 "most 10); the lease must last at least 2.")] = None,
    admin_token: Annotated[Optional[str], typer.Option(
        envvar="SWEEPER_ADMIN_TOKEN", show_default=False,
        help="Token for everything (sweeps, web page); required to bind a non-loopback --host. At least 16 "
             "characters; prefer the environment variable, a flag shows in `ps`.")] = None,
    worker_token: Annotated[Optional[str], typer.Option(
        envvar="SWEEPER_WORKER_TOKEN", show_default=False,
        help="Token that can only claim trials and report on them, for the workers.")] = None,
) -> None:
    """Start the API server."""
    # The server only validates names; the plugins' code runs on the workers.
    _load_plugins(plugins)
    from pydantic import ValidationError

    from api.server import serve as serve_api
    from api.settings import Settings

    # Left out when not given, so the settings' own defaults (the heartbeat follows the lease) apply.
    given = {name: value for name, value in (("lease_seconds", lease_seconds), ("heartbeat_seconds", heartbeat_seconds),
                                             ("admin_token", admin_token), ("worker_token", worker_token))
             if value is not None}
    try:
        # A non-loopback host without an admin token is refused here, with the reason and the fix.
        settings = Settings(host=host, port=port, database_url=database_url, logdir=logdir, **given)
    except ValidationError as error:
        raise _fail("; ".join(_setting_problem(problem) for problem in error.errors()), code=2) from None
    _require_file_system(logdir)
    serve_api(settings)


database = typer.Typer(help="The server's database: its schema migrations.", no_args_is_help=True)
app.add_typer(database, name="db")


@database.command("upgrade")
def upgrade_database(
    database_url: DatabaseUrl = "sqlite:///sweeper.db",
    revision: Annotated[str, typer.Option(help="Revision to upgrade to.")] = "head",
) -> None:
    """Upgrade the database's schema to this version of sweeper, keeping every row (`serve` does it on start)."""
    from sqlalchemy.exc import SQLAlchemyError

    from api.db import make_engine
    from api.migrate import upgrade

    engine = make_engine(database_url)
    try:
        before, after = upgrade(engine, revision)
    except SQLAlchemyError as error:
        raise _fail(f"{_shown_url(database_url)}: cannot upgrade: {error}", code=1) from None
    finally:
        engine.dispose()
    if before == after:
        console.print(f"{_shown_url(database_url)} is at revision {after}; nothing to do")
    else:
        console.print(f"upgraded {_shown_url(database_url)} from revision {before or 'none (empty)'} to {after}")


def _shown_url(database_url: str) -> str:
    # Never print a password that the URL carries.
    from sqlalchemy.engine import make_url

    return make_url(database_url).render_as_string(hide_password=True)


def _require_file_system(logdir: str) -> None:
    """Stop now when the logdir is a URL that TensorFlow cannot read and write (s3:// without a plugin)."""
    if not is_url(logdir):
        return
    from sweeper import _log_files

    try:
        _log_files.require_file_system(logdir)
    except ValueError as error:
        raise _fail(str(error), code=2) from None


def _setting_problem(problem: Any) -> str:
    field = ".".join(str(part) for part in problem["loc"])
    message = str(problem["msg"]).removeprefix("Value error, ")
    return f"{field}: {message}" if field else message


@app.command()
def worker(
    server: Server = DEFAULT_SERVER,
    gpus: Gpus = "all",
    cpu_workers: CpuWorkers = 1,
    trials_per_gpu: TrialsPerGpu = 1,
    data_root: DataRoot = Path("data"),
    plugins: Plugins = None,
    token: Token = None,
) -> None:
    """Start one worker process per GPU, or --trials-per-gpu sharing each (CPU workers when there is none)."""
    from workers.supervisor import run_workers

    modules = _load_plugins(plugins)
    try:
        raise typer.Exit(run_workers(server=server, gpus=gpus, cpu_workers=cpu_workers, data_root=data_root,
                                     plugins=modules, trials_per_gpu=trials_per_gpu, token=token))
    except (ValueError, SweeperError) as error:  # no such GPU; the server refuses the token
        raise _fail(str(error), code=2) from None


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="Sweep spec, YAML or JSON.")],
    server: Server = DEFAULT_SERVER,
    wait: Annotated[bool, typer.Option(help="Show progress until the sweep ends.")] = False,
    logdir: Logdir = "runs",
    plugins: Plugins = None,
    token: Token = None,
) -> None:
    """Submit a sweep spec to the server."""
    # Only for the local check of the spec: a plugin module's names must be known here too.
    _load_plugins(plugins)
    spec = _load(file)
    from sweeper.client import Client

    with Client(server, token=token) as client:
        try:
            sweep = client.create_sweep(spec.to_json())
        except SweeperError as error:
            raise _fail(f"{file}: {error}", code=2) from None
        console.print(f"Created sweep {sweep['id']} {sweep['name']}: {_console.search_size(sweep)}")
        if wait:
            _console.summary(_console.watch(client, sweep["id"], console), logdir, console)


@app.command()
def check(file: Annotated[Path, typer.Argument(help="Sweep spec, YAML or JSON.")]) -> None:
    """Validate a sweep spec and show how large its search is, without a server."""
    spec = _load(file)
    from sweeper._strategies import make_strategy

    strategy = make_strategy(spec)
    console.print(f"{file}: valid; " + _console.search_size(
        {"spec": spec.to_json(), "space_size": strategy.size, "total_trials": strategy.total}))


@app.command()
def status(
    sweep_id: Annotated[Optional[int], typer.Argument(help="A sweep id; all sweeps when left out.")] = None,
    server: Server = DEFAULT_SERVER,
    token: Token = None,
) -> None:
    """Show all sweeps, or one sweep's trials."""
    from sweeper.client import Client

    with Client(server, token=token) as client:
        try:
            if sweep_id is None:
                console.print(_console.sweeps_table(client.list_sweeps(limit=100, offset=0)["data"]))
            else:
                sweep = client.get_sweep(sweep_id)
                console.print(_console.trials_table(sweep, client.list_trials(sweep_id)["data"]))
        except SweeperError as error:
            raise _fail(str(error)) from None


SweepId = Annotated[int, typer.Argument(help="The sweep's id.")]


@app.command("pause")
def pause_sweep(sweep_id: SweepId, server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """Stop handing out a sweep's trials; its running trials finish normally."""
    sweep = _control_sweep(server, token, lambda client: client.pause_sweep(sweep_id))
    running = sweep["trial_counts"]["running"]
    console.print(f"Sweep {sweep['id']} {sweep['name']}: {sweep['status']}"
                  + (f"; {running} running trial(s) will finish" if running else ""))


@app.command("resume")
def resume_sweep(sweep_id: SweepId, server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """Hand out a paused sweep's trials again."""
    sweep = _control_sweep(server, token, lambda client: client.resume_sweep(sweep_id))
    console.print(f"Sweep {sweep['id']} {sweep['name']}: {sweep['status']}")


@app.command("cancel")
def cancel_sweep(sweep_id: SweepId, server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """End a sweep: pending trials are cancelled, running ones stop at their next heartbeat."""
    sweep = _control_sweep(server, token, lambda client: client.cancel_sweep(sweep_id))
    running = sweep["trial_counts"]["running"]
    console.print(f"Sweep {sweep['id']} {sweep['name']}: {sweep['status']}"
                  + (f"; {running} running trial(s) stop at their next heartbeat" if running else ""))


def _control_sweep(server: str, token: str | None, call: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    from sweeper.client import Client

    with Client(server, token=token) as client:
        try:
            return call(client)
        except SweeperError as error:
            raise _fail(str(error)) from None


@app.command("workers")
def list_workers(server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """Show every worker the server has seen: host, GPU, state (idle, busy, lost) and trial."""
    from sweeper.client import Client

    with Client(server, token=token) as client:
        try:
            console.print(_console.workers_table(client.list_workers()["data"]))
        except SweeperError as error:
            raise _fail(str(error)) from None


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="Sweep spec, YAML or JSON.")],
    database_url: DatabaseUrl = "sqlite:///sweeper.db",
    logdir: Logdir = "runs",
    gpus: Gpus = "all",
    cpu_workers: CpuWorkers = 1,
    trials_per_gpu: TrialsPerGpu = 1,
    data_root: DataRoot = Path("data"),
    plugins: Plugins = None,
) -> None:
    """Server, workers and sweep in one command on this machine, ending with the best trial."""
    from api.server import start_in_thread
    from api.settings import Settings
    from sweeper.client import Client
    from workers.gpus import discover_gpus, memory_share_mb, select_gpus
    from workers.supervisor import Supervisor

    modules = _load_plugins(plugins)
    spec = _load(file)
    _require_file_system(logdir)
    try:
        chosen = select_gpus(gpus, discover_gpus())
        for gpu in chosen:
            memory_share_mb(gpu, trials_per_gpu)  # too small to share: say so before starting anything
    except ValueError as error:
        raise _fail(str(error), code=2) from None
    # On loopback and for this command alone: no tokens, even when SWEEPER_ADMIN_TOKEN is set for `serve`.
    server = start_in_thread(Settings(host="127.0.0.1", port=0, database_url=database_url, logdir=logdir,
                                      admin_token=None, worker_token=None))
    # Beside the logs when they are a local folder; an object store takes no appending log file.
    worker_log = Path("workers.log") if is_url(logdir) else Path(logdir) / "workers.log"
    # The workers write to a file: the terminal belongs to the progress bar.
    supervisor = Supervisor(server.url, gpus=chosen, cpu_workers=cpu_workers, output=worker_log,
                            data_root=data_root, plugins=modules, trials_per_gpu=trials_per_gpu)
    try:
        with Client(server.url) as client:
            sweep = client.create_sweep(spec.to_json())
            where = (f"{len(chosen)} GPU(s)" + (f", {trials_per_gpu} trials each" if trials_per_gpu > 1 else "")
                     if chosen else f"{cpu_workers} CPU worker(s)")
            console.print(f"Sweep {sweep['id']} {sweep['name']}: {_console.search_size(sweep)}, on {where} "
                          f"(worker log: {worker_log})")
            supervisor.start()
            sweep = _console.watch(client, sweep["id"], console)
            supervisor.stop()  # before the summary, so the workers' goodbyes do not follow it
            _console.summary(sweep, logdir, console)
    except SweeperError as error:
        raise _fail(str(error)) from None
    finally:
        supervisor.stop()
        server.stop()


@app.command()
def tensorboard(
    sweep_id: Annotated[int, typer.Argument(help="The sweep to show.")],
    logdir: Logdir = "runs",
    port: Annotated[int, typer.Option(help="TensorBoard's port.")] = 6006,
    host: Annotated[str, typer.Option(help="Address TensorBoard binds.")] = "127.0.0.1",
) -> None:
    """Start TensorBoard on one sweep's folder, so its HParams dashboard shows exactly that sweep."""
    from sweeper import _log_files

    folder = sweep_dir(logdir, sweep_id)
    try:
        found = _log_files.isdir(folder)
    except OSError as error:
        raise _fail(f"cannot read the logs of sweep {sweep_id} in {folder}: {error}", code=2) from None
    if not found:
        raise _fail(f"no logs for sweep {sweep_id} in {folder}", code=2)
    console.print(f"TensorBoard for sweep {sweep_id}: http://{host}:{port}/#hparams")
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", folder, "--host", host, "--port", str(port),
               *reader_flags(folder)]
    sys.stdout.flush()
    # This process becomes TensorBoard: Ctrl-C or a SIGTERM reaches it directly, and stopping
    # `sweeper tensorboard` can never leave an orphaned TensorBoard behind.
    os.execve(sys.executable, command, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


if __name__ == "__main__":
    app()

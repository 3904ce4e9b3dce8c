"""What every `sweeper` command shares: its option types, its two consoles, and failing with a message."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from sweeper import PluginError, SpecError, SweepSpec, load_spec, log_files
from sweeper.log_location import is_url
from sweeper.plugins import load_plugins

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
SpecFile = Annotated[Path, typer.Argument(help="Sweep spec, YAML or JSON.")]
DEFAULT_SERVER = "http://127.0.0.1:8000"


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` as an error; the caller raises the answer, so the command exits with `code`."""
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def load_plugin_modules(plugins: list[str] | None) -> list[str]:
    """Import the operator's plugin modules (and entry points) now, so a broken one stops the command here."""
    try:
        return load_plugins(plugins or [])
    except PluginError as error:
        raise fail(str(error), code=2) from None


def load_spec_file(path: Path) -> SweepSpec:
    """The spec in the file; or exit 2 with every problem on a line of its own, `file:line: field: rule`."""
    try:
        return load_spec(path)
    except SpecError as error:
        for line in error.lines:
            errors.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def require_file_system(logdir: str) -> None:
    """Stop now when the logdir is a URL that TensorFlow cannot read and write (s3:// without a plugin)."""
    if not is_url(logdir):
        return
    try:
        log_files.require_file_system(logdir)
    except ValueError as error:
        raise fail(str(error), code=2) from None

"""What every `sweeper` command shares: its option types, its two consoles, and failing with a message."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from sweeper import PluginError, SpecError, SweeperError, SweepSpec, load_spec, log_files
from sweeper.log_location import is_url
from sweeper.plugins import load_plugins

if TYPE_CHECKING:
    from sweeper.client import Client

console = Console()
errors = Console(stderr=True)

Server = Annotated[str, typer.Option(envvar="SWEEPER_SERVER", help="URL of the sweeper server.")]
Token = Annotated[Optional[str], typer.Option(
    envvar="SWEEPER_TOKEN", show_default=False,
    help="The server's token: the admin token (the worker token for `sweeper worker`). Prefer the environment "
         "variable: a flag shows in `ps`.")]
TokenFile = Annotated[Optional[Path], typer.Option(
    envvar="SWEEPER_TOKEN_FILE", show_default=False,
    help="A file holding the worker token, readable by its owner only (chmod 600): for batch jobs and services, "
         "which then keep no token in their environment or command line.")]
Logdir = Annotated[str, typer.Option(envvar="SWEEPER_LOGDIR", help="Folder of the TensorBoard logs and checkpoints, or "
                                                                 "an object-store URL like gs://bucket/prefix.")]
DatabaseUrl = Annotated[str, typer.Option(envvar="SWEEPER_DATABASE_URL", help="SQLAlchemy database URL.")]
Gpus = Annotated[str, typer.Option(help="GPUs to use: all, none, or indices like 0,2.")]
CpuWorkers = Annotated[int, typer.Option(min=1, help="CPU worker processes when no GPU is used.")]
TrialsPerGpu = Annotated[int, typer.Option(min=1, help="Worker processes per GPU (or per group of "
                                                       "--gpus-per-trial GPUs), each limited to an equal share of "
                                                       "its memory (1: one worker, growing as it needs).")]
GpusPerTrial = Annotated[int, typer.Option(min=1, max=64, help="GPUs per worker: the selected GPUs are grouped this "
                                                               "many at a time (the most closely linked together), "
                                                               "and trials of up to this many GPUs run on each group.")]
CpuDevices = Annotated[int, typer.Option(min=1, max=64, help="For testing without a GPU: split each CPU worker's CPU "
                                                             "into this many TensorFlow devices, so trials of up to "
                                                             "this many GPUs run on it (with --gpus none).")]
DataRoot = Annotated[Path, typer.Option(envvar="SWEEPER_DATA_ROOT",
                                        help="Folder that file datasets (npz:PATH, images:PATH) are read from.")]
Plugins = Annotated[Optional[list[str]], typer.Option(
    "--plugins", envvar="SWEEPER_PLUGINS", metavar="MODULE",
    help="Operator module(s) registering models and datasets (repeat, or comma-separated); see docs/plugins.md.")]
SpecFile = Annotated[Path, typer.Argument(help="Sweep spec, YAML or JSON.")]
DEFAULT_SERVER = "http://127.0.0.1:8000"
CONNECT_SECONDS = 1.5
"""How long a command a person typed waits for the server to accept the connection: it answers within 2 s."""


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` as an error; the caller raises the answer, so the command exits with `code`."""
    # One logical line however narrow the terminal: it wraps it, and a copy of it stays one line.
    errors.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def server_client(server: str, token: str | None, *, patient: bool = False) -> Iterator[Client]:
    """A client of the server for a command a person typed; its errors end the command with one line.

    Not `patient`: one try, with CONNECT_SECONDS to connect, so no server means an answer at once that
    names --server (only the workers wait for a server to come back). `patient`: the client's retries,
    for a progress bar that must outlive a server's restart.
    """
    import httpx

    from sweeper.client import Client, ServerUnavailableError

    options = {} if patient else {"retries": 0, "timeout": httpx.Timeout(30.0, connect=CONNECT_SECONDS)}
    try:
        with Client(server, token=token, **options) as client:
            yield client
    except ServerUnavailableError as error:
        if error.status_code is not None:  # it answered, with 5xx
            raise fail(str(error)) from None
        raise fail(f"no sweeper server answers at {client.base_url} ({_cause(error)}); start one with "
                   f"`sweeper serve`, or point --server or SWEEPER_SERVER at yours") from None
    except SweeperError as error:
        raise fail(str(error)) from None


def _cause(error: Exception) -> str:
    """The transport's own words for why the connection failed: "connection refused", "timed out"."""
    cause = error.__cause__
    text = str(cause) if cause is not None else str(error)
    for known in ("Connection refused", "timed out", "Name or service not known", "No route to host"):
        if known.lower() in text.lower():
            return known.lower()
    return text.split("] ")[-1] if text else type(cause).__name__


def read_token_file(path: Path) -> str:
    """The token in `path`; or exit 2 naming the file and the rule it breaks (owner-only mode, one token)."""
    try:
        info = path.stat()
        text = path.read_text()
    except OSError as error:
        raise fail(f"token file {path}: cannot read it ({error.strerror or error})", code=2) from None
    if info.st_uid != os.getuid():
        raise fail(f"token file {path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}): a token file "
                   f"must be yours alone", code=2)
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise fail(f"token file {path} has mode {stat.filemode(info.st_mode)}: other users may read or change it; "
                   f"`chmod 600 {path}` makes it readable by you only", code=2)
    token = text.strip()
    if not token or any(character.isspace() for character in token):
        raise fail(f"token file {path} must hold one token on one line, and holds "
                   f"{'nothing' if not token else 'more than one word'}", code=2)
    return token


def one_token(token: str | None, token_file: Path | None) -> str | None:
    """The token from --token (or SWEEPER_TOKEN) or from --token-file; exit 2 when given both ways."""
    if token_file is None:
        return token
    if token is not None:
        raise fail("give the token either by --token (or SWEEPER_TOKEN) or by --token-file, not both", code=2)
    return read_token_file(token_file)


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

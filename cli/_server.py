"""`sweeper serve` and `sweeper db upgrade`: the API server and its database.

FastAPI and SQLAlchemy are imported inside the commands, so the commands that only talk to a server
never load them.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from cli._common import DatabaseUrl, Logdir, Plugins, console, fail, load_plugin_modules, require_file_system


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
    max_tensorboards: Annotated[Optional[int], typer.Option(
        envvar="SWEEPER_MAX_TENSORBOARDS", show_default=False,
        help="Sweep TensorBoards running at once (default 3; each holds a few hundred MB). Opening another "
             "stops the least recently used idle one (no request for a minute), or answers 503 when all are "
             "in use.")] = None,
    allowed_host: Annotated[Optional[list[str]], typer.Option(
        "--allowed-host", metavar="NAME", show_default=False,
        help="Another name the server answers to (repeat for more; or SWEEPER_ALLOWED_HOSTS, comma-separated), "
             "besides its --host, localhost, 127.0.0.1 and ::1. Without a token, requests naming any other "
             "host are refused (DNS rebinding); with tokens, any name is answered unless some are given.")] = None,
) -> None:
    """Start the API server."""
    # The server only validates names; the plugins' code runs on the workers.
    load_plugin_modules(plugins)
    from pydantic import ValidationError

    from api.server import serve as serve_api
    from api.settings import Settings

    # Left out when not given, so the settings' own defaults (the heartbeat follows the lease) apply.
    given = {name: value for name, value in (("lease_seconds", lease_seconds), ("heartbeat_seconds", heartbeat_seconds),
                                             ("admin_token", admin_token), ("worker_token", worker_token),
                                             ("max_tensorboards", max_tensorboards))
             if value is not None}
    if allowed_host:
        given["allowed_hosts"] = allowed_host
    try:
        # A non-loopback host without an admin token is refused here, with the reason and the fix.
        settings = Settings(host=host, port=port, database_url=database_url, logdir=logdir, **given)
    except ValidationError as error:
        raise fail("; ".join(_setting_problem(problem) for problem in error.errors()), code=2) from None
    require_file_system(logdir)
    serve_api(settings)


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
        raise fail(f"{_shown_url(database_url)}: cannot upgrade: {error}", code=1) from None
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


def _setting_problem(problem: Any) -> str:
    field = ".".join(str(part) for part in problem["loc"])
    message = str(problem["msg"]).removeprefix("Value error, ")
    return f"{field}: {message}" if field else message

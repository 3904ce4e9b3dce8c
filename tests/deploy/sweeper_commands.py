"""The `sweeper` command lines that deployment files run, checked by the real CLI's parser (click's,
without running anything): a renamed command, option or environment variable breaks a test here, not a
lab's deployment."""

from __future__ import annotations

import click
import typer.main

from cli import app

CLI = typer.main.get_command(app)


def parse_sweeper_command(argv: list[str]) -> click.Context:
    """Parse `sweeper ...` with the real CLI, raising click's error for an unknown command or option."""
    assert argv[0] == "sweeper", f"{argv} does not run the sweeper CLI"
    name, *args = argv[1:]
    command = CLI.commands.get(name)  # type: ignore[attr-defined]
    assert command is not None, f"`sweeper {name}` is not a command of the CLI"
    return command.make_context(name, list(args), resilient_parsing=False)


def envvars_of(argv: list[str]) -> set[str]:
    """The environment variables that the command `argv` runs reads through its options."""
    command = CLI.commands[argv[1]]  # type: ignore[attr-defined]
    return {var for param in command.params
            for var in ([param.envvar] if isinstance(param.envvar, str) else param.envvar or [])}


def all_envvars() -> set[str]:
    """Every environment variable some sweeper command reads."""
    return {var for name in CLI.commands for var in envvars_of(["sweeper", name])}  # type: ignore[attr-defined]

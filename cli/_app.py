"""The `sweeper` command: the Typer app and every subcommand's name.

The commands live in modules by what they drive (the server, the workers, sweeps); this one only
names them, so the whole command line reads on one screen.
"""

from __future__ import annotations

import typer

from cli._kubernetes import render as render_kubernetes
from cli._server import serve, upgrade_database
from cli._slurm import slurm
from cli._sweeps import (cancel_sweep, check, extend_sweep, list_workers, pause_sweep, resume_sweep, status, submit,
                         tensorboard)
from cli._workers import run, worker

app = typer.Typer(help="Hyperparameter sweeps for tf.keras, with TensorBoard HParams as the result view.",
                  no_args_is_help=True, add_completion=False)
database = typer.Typer(help="The server's database: its schema migrations.", no_args_is_help=True)
kubernetes = typer.Typer(help="Kubernetes: manifests for the server and the GPU workers.", no_args_is_help=True)

app.command()(serve)
app.add_typer(database, name="db")
database.command("upgrade")(upgrade_database)
app.command()(worker)
app.command()(submit)
app.command()(check)
app.command()(status)
app.command("pause")(pause_sweep)
app.command("resume")(resume_sweep)
app.command("cancel")(cancel_sweep)
app.command("extend")(extend_sweep)
app.command("workers")(list_workers)
app.command()(run)
app.command()(tensorboard)
app.add_typer(slurm, name="slurm")
app.add_typer(kubernetes, name="k8s")
kubernetes.command("render")(render_kubernetes)

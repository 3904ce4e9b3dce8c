"""`python -m cli`: the `sweeper` command without its console script."""

from cli import app

app(prog_name="sweeper")

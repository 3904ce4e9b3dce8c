"""Alembic's environment for sweeper: run with a connection that `api.migrate` hands over.

Sweeper never runs the `alembic` command line against a config file; `sweeper db upgrade` and the
server's start call `api.migrate.upgrade`, which passes its open connection in `config.attributes`.
"""

from __future__ import annotations

from alembic import context

from api.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place; batch mode copies the table instead.
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

"""Fenced leases: each trial's current lease token, and the report that ended its latest lease.

Every claim of a trial issues a larger token, which every later call on the trial must carry
(api.lifecycle). A trial running when this migration runs gets token 0 and no lease end: its worker,
from before tokens, is refused at its next call and the trial goes back to the queue when its lease
expires, resumed from its checkpoint.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_LEASE_END = sa.Enum("claim", "reclaim", "heartbeat", "report", "complete", "fail", "release", "expire", "cancel",
                     "prune", name="trialevent", native_enum=False, length=16)


def upgrade() -> None:
    # Plain ADD COLUMN, which SQLite allows for a NOT NULL column with a default: batch mode would copy the
    # table, and with it risk its AUTOINCREMENT (trial ids must never be reused).
    op.add_column("trials", sa.Column("lease_token", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("trials", sa.Column("lease_end", _LEASE_END, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as trials:
        trials.drop_column("lease_end")
        trials.drop_column("lease_token")

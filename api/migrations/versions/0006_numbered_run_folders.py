"""Numbered run folders: a trial's TensorBoard folder is named by its number within the sweep.

- `sweeps.run_digits`: how many digits the sweep's run names pad trial numbers to (`trial-0007`). Sweeps
  that exist before this revision keep NULL: their trials' folders are named by trial id, where their
  logs and checkpoints already are, so a retry still resumes from its folder.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sweeps", sa.Column("run_digits", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as sweeps:
        sweeps.drop_column("run_digits")

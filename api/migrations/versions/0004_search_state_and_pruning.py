"""Adaptive search and early stopping: the sampler's state and each stopping decision, in sweeper's own tables.

- `sweeps.search_state`, `trials.search_state`: what Optuna's samplers and pruners keep between calls (the
  study's and each trial's system attributes, as JSON), so a restarted server rebuilds the same study.
- `trials.pruned_at_epoch`, `trials.prune_reason`: where and why the stopping rule ended a trial.
- `trial_epochs.decision`: the stopping rule's answer to that epoch's report, stored before it was sent, so
  a report sent again (or after a restart) gets the same answer.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN of nullable columns: batch mode would copy the tables and risk their AUTOINCREMENT.
    op.add_column("sweeps", sa.Column("search_state", sa.JSON(), nullable=True))
    op.add_column("trials", sa.Column("search_state", sa.JSON(), nullable=True))
    op.add_column("trials", sa.Column("pruned_at_epoch", sa.Integer(), nullable=True))
    op.add_column("trials", sa.Column("prune_reason", sa.Text(), nullable=True))
    op.add_column("trial_epochs", sa.Column("decision", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trial_epochs") as epochs:
        epochs.drop_column("decision")
    with op.batch_alter_table("trials") as trials:
        trials.drop_column("prune_reason")
        trials.drop_column("pruned_at_epoch")
        trials.drop_column("search_state")
    with op.batch_alter_table("sweeps") as sweeps:
        sweeps.drop_column("search_state")

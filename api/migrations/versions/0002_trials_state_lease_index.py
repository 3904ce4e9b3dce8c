"""An index on trials (state, lease_expires_at): every claim asks whether any lease has expired.

Without it that question reads every running trial; with it, it is one index probe, so reaping costs
a claim nothing when no lease has expired.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # if_not_exists: a database made by create_all during development may have it already.
    op.create_index("ix_trials_state_lease", "trials", ["state", "lease_expires_at"], unique=False,
                    if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_trials_state_lease", table_name="trials")

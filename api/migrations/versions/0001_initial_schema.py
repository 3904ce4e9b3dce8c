"""The schema of sweeper 0.1: sweeps, trials, their per-epoch metrics, and workers.

Databases made before migrations existed have exactly this schema; `api.migrate.upgrade` stamps
them with this revision before upgrading.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Stored as plain strings (no native enum, no CHECK), so a new state needs no migration.
_SWEEP_STATUS = sa.Enum("running", "paused", "completed", "cancelled", "failed", name="sweepstatus",
                        native_enum=False, length=16)
_TRIAL_STATE = sa.Enum("pending", "running", "completed", "failed", "pruned", "cancelled", name="trialstate",
                       native_enum=False, length=16)
_FAILURE_KIND = sa.Enum("error", "nan", "oom", "crash", name="failurekind", native_enum=False, length=16)


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", _SWEEP_STATUS, nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("total_trials", sa.Integer(), nullable=False),
        sa.Column("next_index", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_sweeps_status", "sweeps", ["status"], unique=False)
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("gpu", sa.String(length=64), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "trials",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("state", _TRIAL_STATE, nullable=False),
        sa.Column("hparams", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("failure_kind", _FAILURE_KIND, nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["sweep_id"], ["sweeps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sweep_id", "index", name="uq_trials_sweep_index"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_trials_state_sweep", "trials", ["state", "sweep_id"], unique=False)
    op.create_index("ix_trials_sweep_id", "trials", ["sweep_id"], unique=False)
    op.create_index("ix_trials_worker_state", "trials", ["worker_id", "state"], unique=False)
    op.create_table(
        "trial_epochs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("reported_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["trial_id"], ["trials.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("trial_id", "epoch", name="uq_trial_epochs_trial_epoch"),
    )


def downgrade() -> None:
    op.drop_table("trial_epochs")
    op.drop_index("ix_trials_worker_state", table_name="trials")
    op.drop_index("ix_trials_sweep_id", table_name="trials")
    op.drop_index("ix_trials_state_sweep", table_name="trials")
    op.drop_table("trials")
    op.drop_table("workers")
    op.drop_index("ix_sweeps_status", table_name="sweeps")
    op.drop_table("sweeps")

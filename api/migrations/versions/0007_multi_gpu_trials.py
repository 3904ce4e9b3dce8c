"""Multi-GPU trials: claims match a sweep's GPUs per trial to the worker's GPUs.

- `sweeps.gpus_per_trial`: the spec's `train.gpus_per_trial`, as a column the claim's SQL filters on. A
  sweep that exists before this revision gets its spec's value (1 where the spec has none).
- `workers.gpus`: how many GPUs a worker gives one trial, as its latest claim said; NULL (counted as 1)
  until its next claim.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sweeps", sa.Column("gpus_per_trial", sa.Integer(), nullable=False, server_default="1"))
    op.add_column("workers", sa.Column("gpus", sa.Integer(), nullable=True))
    sweeps = sa.table("sweeps", sa.column("id", sa.Integer()), sa.column("spec", sa.JSON()),
                      sa.column("gpus_per_trial", sa.Integer()))
    connection = op.get_bind()
    for sweep_id, spec in connection.execute(sa.select(sweeps.c.id, sweeps.c.spec)).all():
        gpus = _gpus_per_trial(spec)
        if gpus != 1:
            connection.execute(sweeps.update().where(sweeps.c.id == sweep_id).values(gpus_per_trial=gpus))


def downgrade() -> None:
    with op.batch_alter_table("workers") as workers:
        workers.drop_column("gpus")
    with op.batch_alter_table("sweeps") as sweeps:
        sweeps.drop_column("gpus_per_trial")


def _gpus_per_trial(spec: Any) -> int:
    if isinstance(spec, str):  # a JSON column read back as text on some drivers
        spec = json.loads(spec)
    train = spec.get("train") if isinstance(spec, dict) else None
    value = train.get("gpus_per_trial", 1) if isinstance(train, dict) else 1
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1

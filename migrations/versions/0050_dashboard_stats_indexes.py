"""Add covering indexes for the dashboard's aggregates

Revision ID: 0050
Revises: 0001
Create Date: 2026-12-04 16:25:00

Runs per hour and day by status, runs by OS family of the target, and
duration percentiles and failure counts by finish time read only these
indexes, so /api/stats stays fast with a long history.
"""

from alembic import op

import webapp.models  # noqa: F401

# revision identifiers, used by Alembic.
revision = "0050"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deployments_queued_at_stats",
            ["queued_at", "status", "target", "playbook"],
            unique=False,
        )
        batch_op.create_index(
            "ix_deployments_finished_at_stats",
            ["finished_at", "status", "playbook", "started_at"],
            unique=False,
        )


def downgrade():
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_index("ix_deployments_finished_at_stats")
        batch_op.drop_index("ix_deployments_queued_at_stats")

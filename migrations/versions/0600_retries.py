"""Record attempts and schedule automatic retries

Revision ID: 0600
Revises: 0400
Create Date: 2026-12-04 16:40:00

"""

import sqlalchemy as sa
from alembic import op

import webapp.models

# revision identifiers, used by Alembic.
revision = "0600"
down_revision = "0400"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("retries", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("max_attempts", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("retry_at", webapp.models.UTCDateTime(), nullable=True)
        )

    with op.batch_alter_table("output_chunks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.Integer(), nullable=True))

    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("reason_code", sa.String(length=64), nullable=True),
        sa.Column("verdict", sa.JSON(), nullable=True),
        sa.Column("worker_name", sa.String(length=255), nullable=True),
        sa.Column("hostname", sa.String(length=255), nullable=True),
        sa.Column("started_at", webapp.models.UTCDateTime(), nullable=True),
        sa.Column("finished_at", webapp.models.UTCDateTime(), nullable=True),
        sa.Column("rc", sa.Integer(), nullable=True),
        sa.Column("stats", sa.JSON(), nullable=True),
        sa.Column("retry_note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["deployment_id"], ["deployments.id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_attempts_run_id", ["deployment_id", "number"], unique=False
        )


def downgrade():
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_attempts_run_id")
    op.drop_table("attempts")

    with op.batch_alter_table("output_chunks", schema=None) as batch_op:
        batch_op.drop_column("attempt")

    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("retry_at")
        batch_op.drop_column("max_attempts")
        batch_op.drop_column("retries")

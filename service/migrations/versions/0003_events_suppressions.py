"""Events (the webhooks' outbox, and the bounces in a message's timeline) and the
suppression list.

Nothing is copied: timelines still read delivery outcomes from the attempt log,
and what happened before this revision is not news to a receiver configured after.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("message_id", sa.String(length=32), nullable=False),
        sa.Column("type", sa.String(length=24), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("code", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("recipient", sa.Text(), nullable=True),
        sa.Column("webhook", sa.String(length=10), nullable=True),
        sa.Column("webhook_owner", sa.Text(), nullable=True),
        sa.Column("webhook_lease_until", sa.Double(), nullable=True),
        sa.Column("webhook_tries", sa.Integer(), nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="CASCADE"),
    )
    bounces = sa.text("type = 'message.bounced'")
    op.create_index(
        "ix_events_bounces",
        "events",
        ["message_id", "id"],
        sqlite_where=bounces,
        postgresql_where=bounces,
    )
    op.create_index("ix_events_webhook", "events", ["webhook", "webhook_tries", "id"])
    op.create_table(
        "suppressions",
        sa.Column("address", sa.Text(), primary_key=True),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    op.create_index("ix_suppressions_created", "suppressions", ["created_at", "address"])


def downgrade() -> None:
    op.drop_index("ix_suppressions_created", table_name="suppressions")
    op.drop_table("suppressions")
    op.drop_index("ix_events_webhook", table_name="events")
    op.drop_index("ix_events_bounces", table_name="events")
    op.drop_table("events")

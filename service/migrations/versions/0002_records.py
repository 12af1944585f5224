"""Records of the product around the pipe: who owns a message (the API key's
name), its tags, metadata, scheduled time and attachment list, and the indexes
that list a key's messages newest first.

Rows made before this revision have no key name: GET /messages/{id} answers them
to any key, as it did when they were made, and GET /messages lists only owned rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Nullable with no default: adding them rewrites no row on either database.
    op.add_column("messages", sa.Column("key_name", sa.Text(), nullable=True))
    op.add_column("messages", sa.Column("tags", sa.Text(), nullable=True))
    op.add_column("messages", sa.Column("meta", sa.Text(), nullable=True))
    op.add_column("messages", sa.Column("send_at", sa.Double(), nullable=True))
    op.add_column("messages", sa.Column("attachments", sa.Text(), nullable=True))
    if op.get_context().dialect.name != "sqlite":
        # "scheduled" and "cancelled" are nine characters. SQLite does not hold a
        # VARCHAR to its length, and altering a column there would copy the table
        # (and, with foreign keys on, its DROP would cascade to the attempts).
        op.alter_column(
            "messages",
            "status",
            type_=sa.String(length=16),
            existing_type=sa.String(length=8),
            existing_nullable=False,
        )
    op.create_index("ix_messages_key_id", "messages", ["key_name", "id"])
    op.create_table(
        "message_tags",
        sa.Column("message_id", sa.String(length=32), nullable=False),
        sa.Column("key_name", sa.Text(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("message_id", "tag"),
    )
    op.create_index("ix_message_tags_key_tag", "message_tags", ["key_name", "tag", "message_id"])


def downgrade() -> None:
    op.drop_index("ix_message_tags_key_tag", table_name="message_tags")
    op.drop_table("message_tags")
    op.drop_index("ix_messages_key_id", table_name="messages")
    if op.get_context().dialect.name != "sqlite":
        op.alter_column(
            "messages",
            "status",
            type_=sa.String(length=8),
            existing_type=sa.String(length=16),
            existing_nullable=False,
        )
    # SQLite 3.35 and newer drop a column in place.
    for column in ("attachments", "send_at", "meta", "tags", "key_name"):
        op.drop_column("messages", column)

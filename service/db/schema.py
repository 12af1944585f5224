"""The tables. Alembic migrations (service/migrations) create them; this is their
definition in Core, which the statements are written against."""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["attempts_table", "messages_table", "metadata"]

metadata = sa.MetaData()

messages_table = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # uuid4 hex
    sa.Column("mode", sa.String(8), nullable=False),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("mail_from", sa.Text, nullable=False),
    sa.Column("rcpt_tos", sa.Text, nullable=False),  # JSON list: the envelope
    sa.Column("to_addrs", sa.Text, nullable=False),  # JSON list: the display `to`
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("message_id", sa.Text, nullable=False),  # the Message-ID header
    sa.Column("smtputf8", sa.Boolean, nullable=False, default=False),
    sa.Column("raw", sa.LargeBinary, nullable=True),  # NULL once purged by retention
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_code", sa.Integer, nullable=True),
    sa.Column("rejected", sa.Text, nullable=True),  # JSON list of {recipient, code, message}
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("sent_at", sa.Double, nullable=True),
    sa.Column("next_attempt_at", sa.Double, nullable=True),
    sa.Column("lease_until", sa.Double, nullable=True),
    sa.Column("owner", sa.Text, nullable=True),
    # Unique, so two concurrent requests with one key cannot both insert; NULL
    # (no key, or purged after the TTL) never collides.
    sa.Column("idempotency_scope", sa.Text, nullable=True),
    sa.Column("request_hash", sa.Text, nullable=True),
    sa.Column("response_code", sa.Integer, nullable=True),
    sa.Column("response_body", sa.Text, nullable=True),
    sa.UniqueConstraint("idempotency_scope", name="uq_messages_idempotency_scope"),
    # due_ids() and claim(): queued rows ordered by due time.
    sa.Index("ix_messages_status_next_attempt", "status", "next_attempt_at"),
    # reclaim_expired_leases(): rows in sending ordered by lease end.
    sa.Index("ix_messages_status_lease", "status", "lease_until"),
)

attempts_table = sa.Table(
    "attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "message_id",
        sa.String(32),
        sa.ForeignKey("messages.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Double, nullable=False),
    sa.Column("finished_at", sa.Double, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # sent | temporary | permanent
    sa.Column("code", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
)

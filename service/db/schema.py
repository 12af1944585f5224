"""The tables. Alembic migrations (service/migrations) create them; this is their
definition in Core, which the statements are written against."""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "attempts_table",
    "events_table",
    "message_tags_table",
    "messages_table",
    "metadata",
    "suppressions_table",
]

metadata = sa.MetaData()

messages_table = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # uuid4 hex
    sa.Column("mode", sa.String(8), nullable=False),
    # SQLite keeps the VARCHAR(8) of revision 0001: it holds no VARCHAR to its
    # length, and widening it there would copy the table (see revision 0002).
    sa.Column("status", sa.String(16).with_variant(sa.String(8), "sqlite"), nullable=False),
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
    # The API key's name that made the message (NULL: made before names existed).
    sa.Column("key_name", sa.Text, nullable=True),
    sa.Column("tags", sa.Text, nullable=True),  # JSON list of strings
    sa.Column("meta", sa.Text, nullable=True),  # JSON object: the request's `metadata`
    sa.Column("send_at", sa.Double, nullable=True),  # the requested time, when scheduled
    sa.Column("attachments", sa.Text, nullable=True),  # JSON list of {filename, content_type, size}
    sa.UniqueConstraint("idempotency_scope", name="uq_messages_idempotency_scope"),
    # due_ids() and claim(): queued rows ordered by due time.
    sa.Index("ix_messages_status_next_attempt", "status", "next_attempt_at"),
    # reclaim_expired_leases(): rows in sending ordered by lease end.
    sa.Index("ix_messages_status_lease", "status", "lease_until"),
    # GET /messages: a key's messages newest first (ids are time-ordered).
    sa.Index("ix_messages_key_id", "key_name", "id"),
)

# One row per tag of a message, for GET /messages?tag=: a key's messages with a
# tag, newest first, from the index alone.
message_tags_table = sa.Table(
    "message_tags",
    metadata,
    sa.Column(
        "message_id",
        sa.String(32),
        sa.ForeignKey("messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("key_name", sa.Text, nullable=False),
    sa.Column("tag", sa.String(64), primary_key=True),
    sa.Index("ix_message_tags_key_tag", "key_name", "tag", "message_id"),
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

# A message's timeline after its acceptance, each row written in the transaction
# that records its cause, and the webhooks' outbox: `webhook` is pending until a
# receiver took it (delivered) or it grew too old (dropped); NULL when no
# receiver was configured as it was written.
events_table = sa.Table(
    "events",
    metadata,
    # 64 bits on PostgreSQL (a busy service makes billions in years); SQLite's
    # INTEGER PRIMARY KEY is 64 bits already, and only that spelling autoincrements.
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column(
        "message_id",
        sa.String(32),
        sa.ForeignKey("messages.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("type", sa.String(24), nullable=False),  # message.sent, message.bounced, ...
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=True),
    sa.Column("code", sa.Integer, nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("recipient", sa.Text, nullable=True),
    sa.Column("webhook", sa.String(10), nullable=True),  # pending | delivered | dropped
    sa.Column("webhook_owner", sa.Text, nullable=True),
    sa.Column("webhook_lease_until", sa.Double, nullable=True),
    sa.Column("webhook_tries", sa.Integer, nullable=False, server_default="0"),
    # A message's bounces, for its timeline. Partial: the other events are read by
    # the dispatcher's index below only, and each row kept out of this one is a
    # b-tree insert fewer on the delivery path.
    sa.Index(
        "ix_events_bounces",
        "message_id",
        "id",
        sqlite_where=sa.text("type = 'message.bounced'"),
        postgresql_where=sa.text("type = 'message.bounced'"),
    ),
    # The dispatcher's claim: pending events, the least tried and oldest first.
    sa.Index("ix_events_webhook", "webhook", "webhook_tries", "id"),
)

# Addresses no message goes to: shared by every key. `address` is the canonical
# form, lower-cased (see suppressions.canonical).
suppressions_table = sa.Table(
    "suppressions",
    metadata,
    sa.Column("address", sa.Text, primary_key=True),
    sa.Column("reason", sa.String(16), nullable=False),  # hard_bounce | manual
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("message_id", sa.String(32), nullable=True),  # the message that caused it
    sa.Column("detail", sa.Text, nullable=True),
    # GET /suppressions: newest first, by keyset.
    sa.Index("ix_suppressions_created", "created_at", "address"),
)

"""Reads for the API and for operators: one message's record, a key's messages page
by page, their timelines, attempts and bytes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from service.db.schema import attempts_table, events_table, message_tags_table, messages_table
from service.db.statements import record_from_row
from service.db.store import Store
from service.timeline import timeline
from service.types import MessageRecord

__all__ = ["MessageFilter", "Reads"]

_m = messages_table.c
_a = attempts_table.c
_t = message_tags_table.c
_e = events_table.c

_RECORD_COLUMNS = (
    _m.id,
    _m.mode,
    _m.status,
    _m.attempts,
    _m.last_error,
    _m.last_code,
    _m.created_at,
    _m.updated_at,
    _m.sent_at,
    _m.message_id,
    _m.to_addrs,
    _m.subject,
    _m.rejected,
    _m.tags,
    _m.meta,
    _m.send_at,
    _m.attachments,
)


@dataclass(frozen=True, slots=True)
class MessageFilter:
    """GET /messages: one key's messages, newest first, with ids below `before`."""

    key_name: str
    status: str | None = None
    tag: str | None = None
    recipient: str | None = None  # an envelope recipient (to, cc or bcc), any case
    since_id: str | None = None  # the smallest id of the time `since` (ids are time-ordered)
    before_id: str | None = None  # the cursor: the last id of the previous page


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Reads(Store):
    def oldest_queued_age(self) -> float | None:
        query = sa.select(sa.func.min(_m.created_at)).where(
            _m.status == "queued", _m.mode == "async"
        )
        with self._read() as conn:
            oldest = conn.execute(query).scalar_one()
        if oldest is None:
            return None
        return max(0.0, self._clock() - float(oldest))

    def get(self, id: str, key_name: str | None = None) -> MessageRecord | None:
        """One record with its timeline. With `key_name`, only that key's record or
        one made before keys had names (None otherwise, as for an unknown id)."""
        query = sa.select(*_RECORD_COLUMNS).where(_m.id == id)
        if key_name is not None:
            query = query.where(sa.or_(_m.key_name == key_name, _m.key_name.is_(None)))
        with self._read() as conn:
            row = conn.execute(query).first()
            if row is None:
                return None
            logs = self._timeline_rows(conn, [row.id])
        return self._record(row, logs[row.id])

    def list_messages(self, where: MessageFilter, limit: int) -> list[MessageRecord]:
        """Up to `limit` records of one key, newest first, below the cursor.

        Keyset pagination on the time-ordered ids, from an index: (key_name, id),
        or (key_name, tag, message_id) with a tag; the walk starts at the cursor, so
        a page costs the same at any depth and an insert meanwhile (a newer id)
        neither shifts nor repeats what follows. A status or recipient filter is
        checked on the rows the walk meets.
        """
        if where.tag is not None:
            order_id = _t.message_id
            query = (
                sa.select(*_RECORD_COLUMNS)
                .select_from(message_tags_table.join(messages_table, _m.id == _t.message_id))
                .where(_t.key_name == where.key_name, _t.tag == where.tag)
            )
        else:
            order_id = _m.id
            query = sa.select(*_RECORD_COLUMNS).where(_m.key_name == where.key_name)
        if where.before_id is not None:
            query = query.where(order_id < where.before_id)
        if where.since_id is not None:
            query = query.where(order_id >= where.since_id)
        if where.status is not None:
            query = query.where(_m.status == where.status)
        if where.recipient is not None:
            needle = _like_escape(json.dumps(where.recipient))
            query = query.where(_m.rcpt_tos.ilike(f"%{needle}%", escape="\\"))
        query = query.order_by(order_id.desc()).limit(limit)
        with self._read() as conn:
            rows = conn.execute(query).all()
            logs = self._timeline_rows(conn, [row.id for row in rows])
        return [self._record(row, logs[row.id]) for row in rows]

    @staticmethod
    def _timeline_rows(
        conn: sa.Connection, ids: Sequence[str]
    ) -> dict[str, tuple[list[Any], list[Any]]]:
        """Per message: its attempt rows and its bounces, each in the order written."""
        found: dict[str, tuple[list[Any], list[Any]]] = {id_: ([], []) for id_ in ids}
        if not ids:
            return found
        attempts = (
            sa.select(_a.message_id, _a.number, _a.finished_at, _a.outcome, _a.code, _a.error)
            .where(_a.message_id.in_(ids))
            .order_by(_a.id)
        )
        for row in conn.execute(attempts):
            found[row.message_id][0].append(row)
        bounces = (
            sa.select(_e.message_id, _e.type, _e.at, _e.code, _e.detail, _e.recipient)
            # A literal, not a bound value: the planner must see that the query
            # implies the partial index's condition (ix_events_bounces).
            .where(_e.message_id.in_(ids), _e.type == sa.literal_column("'message.bounced'"))
            .order_by(_e.id)
        )
        for row in conn.execute(bounces):
            found[row.message_id][1].append(row)
        return found

    @staticmethod
    def _record(row: Any, logs: tuple[list[Any], list[Any]]) -> MessageRecord:
        attempts, bounces = logs
        return record_from_row(row, timeline(row, attempts, bounces))

    def attempts(self, id: str) -> list[dict[str, Any]]:
        """The attempt log of one message, oldest first (for operators and tests)."""
        query = (
            sa.select(_a.number, _a.started_at, _a.finished_at, _a.outcome, _a.code, _a.error)
            .where(_a.message_id == id)
            .order_by(_a.id)
        )
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def raw(self, id: str) -> bytes | None:
        """The stored message bytes (None once purged or for an unknown id)."""
        with self._read() as conn:
            value = conn.execute(sa.select(_m.raw).where(_m.id == id)).scalar_one_or_none()
        return bytes(value) if value is not None else None

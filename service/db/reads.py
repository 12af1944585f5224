"""Reads for the API and for operators: one message's record, its attempts, its bytes."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from service.db.schema import attempts_table, messages_table
from service.db.statements import record_from_row
from service.db.store import Store
from service.types import MessageRecord

__all__ = ["Reads"]

_m = messages_table.c


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

    def get(self, id: str) -> MessageRecord | None:
        query = sa.select(
            _m.id,
            _m.status,
            _m.attempts,
            _m.last_error,
            _m.created_at,
            _m.updated_at,
            _m.sent_at,
            _m.message_id,
            _m.to_addrs,
            _m.subject,
            _m.rejected,
        ).where(_m.id == id)
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return record_from_row(row)

    def attempts(self, id: str) -> list[dict[str, Any]]:
        """The attempt log of one message, oldest first (for operators and tests)."""
        a = attempts_table.c
        query = (
            sa.select(a.number, a.started_at, a.finished_at, a.outcome, a.code, a.error)
            .where(a.message_id == id)
            .order_by(a.id)
        )
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def raw(self, id: str) -> bytes | None:
        """The stored message bytes (None once purged or for an unknown id)."""
        with self._read() as conn:
            value = conn.execute(sa.select(_m.raw).where(_m.id == id)).scalar_one_or_none()
        return bytes(value) if value is not None else None

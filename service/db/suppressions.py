"""The suppression list: addresses no message goes to, shared by every key.

Hard bounces and permanent RCPT refusals are written with the outcome or bounce
that found them (statements.hard_refusals, bounces.py); these are the API's reads
and manual writes. Addresses are kept as syntax.suppression_key makes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from service.db.schema import suppressions_table
from service.db.store import Store
from service.syntax import suppression_key
from service.types import Suppression

__all__ = ["SuppressionList"]

_s = suppressions_table.c


def _suppression(row: Any) -> Suppression:
    return Suppression(
        address=row.address,
        reason=row.reason,
        created_at=row.created_at,
        message_id=row.message_id,
    )


class SuppressionList(Store):
    def suppressed(self, addresses: Sequence[str]) -> list[str]:
        """Which of `addresses` are listed (in their suppression_key form). The
        accept path checks inside its insert instead (AcceptWrites._refuse_suppressed)."""
        with self._driver() as cursor:
            return sorted(self._listed(cursor, addresses))

    def suppress(self, address: str, reason: str) -> tuple[Suppression, bool]:
        """List `address` (left as it is when already listed); the entry and whether
        this call added it."""
        row = {"address": suppression_key(address), "reason": reason, "created_at": self._clock()}
        with self._tx() as conn:
            added = conn.exec_driver_sql(self._suppress.sql, [self._suppress.params(row)])
            stored = conn.execute(
                sa.select(_s.address, _s.reason, _s.created_at, _s.message_id).where(
                    _s.address == row["address"]
                )
            ).one()
        return _suppression(stored), added.rowcount == 1

    def unsuppress(self, address: str) -> bool:
        statement = suppressions_table.delete().where(_s.address == suppression_key(address))
        with self._tx() as conn:
            return bool(conn.execute(statement).rowcount)

    def list_suppressions(
        self, limit: int, after: tuple[float, str] | None = None
    ) -> list[Suppression]:
        """Newest first, by keyset on (created_at, address) from the index: `after` is
        the last entry of the previous page."""
        query = sa.select(_s.address, _s.reason, _s.created_at, _s.message_id)
        if after is not None:
            at, address = after
            query = query.where(
                sa.or_(_s.created_at < at, sa.and_(_s.created_at == at, _s.address < address))
            )
        query = query.order_by(_s.created_at.desc(), _s.address.desc()).limit(limit)
        with self._read() as conn:
            return [_suppression(row) for row in conn.execute(query)]

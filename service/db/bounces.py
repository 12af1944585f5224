"""A bounce that came back after the relay took a message: the record becomes
`bounced`, one `message.bounced` event per recipient, and the hard ones go on the
suppression list, all in one transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from service.db.schema import messages_table
from service.db.store import Store
from service.syntax import suppression_key

__all__ = ["BounceWrites", "BouncedAddress"]

_m = messages_table.c


@dataclass(frozen=True, slots=True)
class BouncedAddress:
    recipient: str
    code: int | None  # the SMTP reply code in the diagnostic, when it has one
    detail: str  # the status and the diagnostic, as the report gave them
    permanent: bool  # a 5.x.x status: the address goes on the suppression list


class BounceWrites(Store):
    def record_bounce(self, record_id: str, bounced: Sequence[BouncedAddress]) -> int | None:
        """The recipients recorded as bounced (0: none of them was the message's);
        None for an id we have no sent record of. Nothing is written for a recipient
        the message was not sent to: the id travels in the envelope sender and the
        Message-ID, which every recipient sees, so a report naming another address
        must not put it on the shared suppression list."""
        now = self._clock()
        with self._tx() as conn:
            row = conn.execute(sa.select(_m.rcpt_tos, _m.status).where(_m.id == record_id)).first()
            # Only a message the relay took can bounce (`sending`: taken, its row not
            # yet written).
            if row is None or row.status not in ("sent", "bounced", "sending"):
                return None
            ours = {suppression_key(address) for address in json.loads(row.rcpt_tos)}
            bounced = [b for b in bounced if suppression_key(b.recipient) in ours]
            if not bounced:
                return 0
            first = bounced[0]
            conn.execute(
                messages_table.update()
                .where(_m.id == record_id)
                .values(
                    # A message still being recorded (`sending`) is left to its outcome,
                    # which says sent; the bounce still shows in its timeline.
                    status=sa.case(
                        (_m.status.in_(("sent", "bounced")), "bounced"), else_=_m.status
                    ),
                    last_error=f"bounced: {first.recipient}: {first.detail}",
                    last_code=first.code,
                    updated_at=now,
                )
            )
            events = [
                self._event.params(
                    {
                        "message_id": record_id,
                        "type": "message.bounced",
                        "at": now,
                        "attempt": None,
                        "code": b.code,
                        "detail": b.detail,
                        "recipient": b.recipient,
                        "webhook": self.webhook_state,
                    }
                )
                for b in bounced
            ]
            conn.exec_driver_sql(self._event.sql, events)
            hard = [
                self._suppress.params(
                    {
                        "address": suppression_key(b.recipient),
                        "reason": "hard_bounce",
                        "created_at": now,
                        "message_id": record_id,
                        "detail": b.detail,
                    }
                )
                for b in bounced
                if b.permanent
            ]
            if hard:
                conn.exec_driver_sql(self._suppress.sql, hard)
        return len(bounced)

"""The message log and outbox: SQLAlchemy Core over SQLite (WAL) or PostgreSQL.

- `schema`: the tables; `engine`: make_engine and the SQLite pragmas;
- `statements`: the hot paths' statements compiled once, and row conversions;
- `store`: transactions and the one translation of driver errors;
- `accept`, `delivery`, `reads`: the Outbox's writes and reads, by the path that
  uses them; `outbox`: the class that joins them.

The names below are re-exported so that `from service import db` reads as one
module to its callers.
"""

from __future__ import annotations

from service.db.delivery import INTERRUPTED_SYNC_ERROR
from service.db.engine import SQLITE_AUTOCHECKPOINT_PAGES, SQLITE_BUSY_TIMEOUT_MS, make_engine
from service.db.outbox import Outbox
from service.db.schema import attempts_table, messages_table, metadata
from service.errors import DatabaseUnavailable, IdempotencyKeyTaken
from service.types import (
    ClaimedMessage,
    IdempotencyRecord,
    MessageRecord,
    Mode,
    NewMessage,
    Outcome,
    Status,
)

__all__ = [
    "INTERRUPTED_SYNC_ERROR",
    "SQLITE_AUTOCHECKPOINT_PAGES",
    "SQLITE_BUSY_TIMEOUT_MS",
    "ClaimedMessage",
    "DatabaseUnavailable",
    "IdempotencyKeyTaken",
    "IdempotencyRecord",
    "MessageRecord",
    "Mode",
    "NewMessage",
    "Outbox",
    "Outcome",
    "Status",
    "attempts_table",
    "make_engine",
    "messages_table",
    "metadata",
]

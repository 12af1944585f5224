"""make_engine: the SQLite pragmas and pool the outbox relies on."""

from __future__ import annotations

import threading

import pytest

from service import db
from service.db import Outbox, make_engine
from tests.db.helpers import make_settings, new_message
from tests.helpers import FakeClock

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
def test_sqlite_engine_uses_wal_busy_timeout_foreign_keys_and_the_synchronous_setting(
    sqlite_url: str, synchronous: str
) -> None:
    engine = make_engine(make_settings(sqlite_url, sqlite_synchronous=synchronous))
    try:
        with engine.connect() as conn:

            def pragma(name: str) -> object:
                return conn.exec_driver_sql(f"PRAGMA {name}").scalar()

            assert pragma("journal_mode") == "wal"
            assert pragma("synchronous") == {"NORMAL": 1, "FULL": 2}[synchronous]
            assert pragma("busy_timeout") == db.SQLITE_BUSY_TIMEOUT_MS
            assert pragma("foreign_keys") == 1
    finally:
        engine.dispose()


def test_sqlite_pool_is_sized_to_the_worker_concurrency(sqlite_url: str) -> None:
    engine = make_engine(make_settings(sqlite_url, worker_concurrency=7))
    try:
        assert engine.pool.size() == 7 + 4  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_in_memory_sqlite_is_one_database_for_every_thread(clock: FakeClock) -> None:
    engine = make_engine(make_settings("sqlite://"))
    outbox = Outbox(engine, clock=clock)
    outbox.create_schema()
    message = new_message()
    thread = threading.Thread(target=outbox.insert, args=(message,))
    thread.start()
    thread.join()
    assert outbox.get(message.id) is not None
    engine.dispose()

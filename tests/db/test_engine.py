"""make_engine: the SQLite pragmas and pool the outbox relies on."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from service import db
from service.db import Outbox, make_engine
from tests.db.helpers import OutboxFactory, make_settings, new_message
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
            assert pragma("wal_autocheckpoint") == db.SQLITE_AUTOCHECKPOINT_PAGES
    finally:
        engine.dispose()


def test_commits_leave_the_wal_to_the_checkpoint_which_copies_it_into_the_database(
    sqlite_url: str, outbox_factory: OutboxFactory
) -> None:
    """No commit pays for a checkpoint at SQLite's default (1,000 pages of WAL);
    Outbox.checkpoint, which the scheduler runs every poll, does it."""
    outbox = outbox_factory(sqlite_url)
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    before = path.stat().st_size
    for _ in range(300):  # about 2,000 pages of WAL
        message = new_message()
        big = dataclasses.replace(message.rendered, data=b"x" * 20_000)
        outbox.insert(dataclasses.replace(message, rendered=big))
    wal = Path(f"{path}-wal").stat().st_size
    assert wal > 1_500 * 4096
    assert path.stat().st_size == before  # nothing copied back by a commit
    outbox.checkpoint()
    assert path.stat().st_size > before + 1_000 * 4096
    assert len(outbox.due_ids(1000)) == 300


@pytest.mark.postgres
def test_checkpoint_is_nothing_to_do_on_postgres(
    pg_url: str, outbox_factory: OutboxFactory
) -> None:
    outbox_factory(pg_url).checkpoint()


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

"""The database failing: every driver error the Store sees becomes DatabaseUnavailable
(a 503), never a 202 for a row that was not stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from service import db
from service.db import DatabaseUnavailable, make_engine
from service.db import engine as db_engine
from tests.db.helpers import OutboxFactory, make_settings, new_message

pytestmark = pytest.mark.unit


def test_insert_raises_database_unavailable_when_the_directory_is_removed(
    tmp_path: Path, outbox_factory: OutboxFactory
) -> None:
    """Pooled connections would commit into an unlinked file: that must not be a 202."""
    directory = tmp_path / "data"
    directory.mkdir()
    outbox = outbox_factory(f"sqlite:///{directory / 'outbox.db'}")
    outbox.insert(new_message())  # a pooled connection now exists
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    with pytest.raises(DatabaseUnavailable, match="gone"):
        outbox.insert(new_message())


def test_insert_raises_database_unavailable_when_the_file_is_replaced(
    tmp_path: Path, outbox_factory: OutboxFactory
) -> None:
    path = tmp_path / "outbox.db"
    outbox = outbox_factory(f"sqlite:///{path}")
    outbox.insert(new_message())
    path.rename(tmp_path / "moved.db")
    path.write_bytes(b"")
    with pytest.raises(DatabaseUnavailable, match="replaced"):
        outbox.insert(new_message())


def test_a_new_outbox_in_a_removed_directory_is_unavailable(
    tmp_path: Path, outbox_factory: OutboxFactory
) -> None:
    outbox = outbox_factory(f"sqlite:///{tmp_path / 'gone' / 'outbox.db'}", create=False)
    with pytest.raises(DatabaseUnavailable):
        outbox.create_schema()
    with pytest.raises(DatabaseUnavailable):
        outbox.get("x")


def test_insert_into_a_read_only_database_is_unavailable(
    tmp_path: Path, outbox_factory: OutboxFactory
) -> None:
    path = tmp_path / "outbox.db"
    outbox_factory(f"sqlite:///{path}")  # creates the schema
    # We run as root in CI, where chmod does not stop writes; opening the file
    # read-only gives the same SQLite error a read-only file gives.
    read_only = outbox_factory(f"sqlite:///file:{path}?mode=ro&uri=true", create=False)
    with pytest.raises(DatabaseUnavailable, match="readonly"):
        read_only.insert(new_message())


def test_insert_when_the_disk_is_full_is_unavailable(
    sqlite_url: str, outbox_factory: OutboxFactory
) -> None:
    outbox = outbox_factory(sqlite_url)
    with outbox.engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
        # The connection goes back to the pool with the cap, as a full disk would.
        conn.exec_driver_sql(f"PRAGMA max_page_count={pages}")
    big = new_message()
    big = db.NewMessage(
        id=big.id,
        mode="async",
        rendered=type(big.rendered)(
            message_id=big.rendered.message_id,
            mail_from=big.rendered.mail_from,
            rcpt_tos=big.rendered.rcpt_tos,
            data=b"x" * 200_000,
        ),
        to=big.to,
        subject=big.subject,
    )
    with pytest.raises(DatabaseUnavailable, match="full"):
        outbox.insert(big)


def test_insert_while_another_writer_holds_the_lock_past_busy_timeout_is_unavailable(
    sqlite_url: str, outbox_factory: OutboxFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_engine, "SQLITE_BUSY_TIMEOUT_MS", 100)
    outbox = outbox_factory(sqlite_url)
    blocker = make_engine(make_settings(sqlite_url))
    try:
        with blocker.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            with pytest.raises(DatabaseUnavailable, match="locked"):
                outbox.insert(new_message())
            conn.exec_driver_sql("ROLLBACK")
    finally:
        blocker.dispose()
    outbox.insert(new_message())  # and it recovers once the lock is gone

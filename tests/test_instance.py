"""InstanceLock on a real SQLite file and the real PostgreSQL: one live process per
instance. (The processes themselves are tested in tests/e2e/test_crash_recovery.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from service.errors import InstanceLocked
from service.instance import InstanceLock, advisory_key

pytestmark = pytest.mark.unit


def test_a_sqlite_file_is_locked_for_as_long_as_it_is_held(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    # Another name changes nothing: the file is one instance's.
    with (
        InstanceLock.acquire(url, "one"),
        pytest.raises(InstanceLocked, match=r"outbox\.db is in use by another"),
    ):
        InstanceLock.acquire(url, "two")
    InstanceLock.acquire(url, "two").release()  # free again once released


def test_the_sqlite_lock_leaves_a_working_database_file(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with InstanceLock.acquire(f"sqlite:///{path}", "one"):
        engine = sa.create_engine(f"sqlite:///{path}")
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT x FROM t")).scalar_one() == 1
        engine.dispose()


def test_an_in_memory_database_needs_no_lock() -> None:
    with InstanceLock.acquire("sqlite://", "one"), InstanceLock.acquire("sqlite://", "one"):
        pass


@pytest.mark.postgres
def test_postgres_locks_the_instance_id_not_the_database(pg_url: str) -> None:
    with InstanceLock.acquire(pg_url, "host-a:8000"):
        with pytest.raises(InstanceLocked, match=r"'host-a:8000'.*own INSTANCE_ID"):
            InstanceLock.acquire(pg_url, "host-a:8000")
        InstanceLock.acquire(pg_url, "host-a:8001").release()  # another instance may run
    InstanceLock.acquire(pg_url, "host-a:8000").release()


@pytest.mark.postgres
def test_the_postgres_lock_goes_with_its_session(pg_url: str) -> None:
    """A killed process's session ends, and the server drops its lock (here the
    session is ended from outside, as the server does for a dead client)."""
    lock = InstanceLock.acquire(pg_url, "crashed")
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid::bigint = ((CAST(:key AS bigint) >> 32) & 4294967295) "
                "AND objid::bigint = (CAST(:key AS bigint) & 4294967295)"
            ),
            {"key": advisory_key("crashed")},
        )
    InstanceLock.acquire(pg_url, "crashed").release()
    lock.release()  # its session is gone: nothing to drop, and no error
    engine.dispose()


def test_advisory_keys_are_stable_and_differ_by_name() -> None:
    assert advisory_key("a") == advisory_key("a")
    assert advisory_key("a") != advisory_key("b")
    assert -(2**63) <= advisory_key("a") < 2**63

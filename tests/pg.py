"""The local PostgreSQL (127.0.0.1:5432, trust auth) for tests: throwaway schemas.

A plain module rather than a fixture so that the outbox and postgres areas
share one implementation; each area wraps it in its own fixture.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
PG_URL = f"{PG_SERVER}/test"


def admin_engine(url: str = PG_URL) -> sa.Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)


def wait_for_postgres(timeout: float = 30.0) -> None:
    """Block until the server accepts connections again (after a restart)."""
    deadline = time.monotonic() + timeout
    engine = admin_engine()
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
                return
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        engine.dispose()


@contextmanager
def throwaway_schema() -> Iterator[str]:
    """A fresh schema, first on the search_path of the URL yielded; dropped after."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = admin_engine()
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except sa.exc.OperationalError as exc:  # pragma: no cover - depends on the machine
        admin.dispose()
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is not answering: {exc}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        wait_for_postgres()  # a test may have restarted the server
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()

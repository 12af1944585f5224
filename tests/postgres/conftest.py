"""PostgreSQL fixtures: a throwaway schema or database per test, dropped after.

In-process tests use a schema first on the search_path (cheap); tests that
start `python -m service` processes get a whole database (CREATE DATABASE),
so that every process and every connection sees the same tables whatever it
does with its search_path.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.pg import PG_SERVER, admin_engine, throwaway_schema, wait_for_postgres


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A fresh schema on the local PostgreSQL, first on the search_path, dropped after."""
    with throwaway_schema() as url:
        yield url


@pytest.fixture
def pg_database_url() -> Iterator[str]:
    """A fresh database, dropped after (its connections are ended first)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = admin_engine()
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except sa.exc.OperationalError as exc:  # pragma: no cover - depends on the machine
        admin.dispose()
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is not answering: {exc}")
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        wait_for_postgres()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mail.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def any_url(request: pytest.FixtureRequest) -> str:
    """Behaviour tests that must hold on both databases."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_schema_url"
    url: str = request.getfixturevalue(fixture)
    return url


def restart_postgres() -> None:
    """Restart the local cluster (the version directory is the only one in /etc/postgresql)."""
    version = next(p.name for p in Path("/etc/postgresql").iterdir())
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=60,
    )

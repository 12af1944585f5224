"""Fixtures every area uses: the databases (a SQLite file, a throwaway PostgreSQL
schema or database) and outboxes on them with a fake clock. Area fixtures live in
each tests/<area>/conftest.py; helpers in tests/helpers.py and tests/<area>/helpers.py.

The fakesmtp pytest plugin (fixtures `fakesmtp`, `fakesmtp_factory`) is loaded
through the `pytest11` entry point of our own package.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service.db import Outbox, make_engine
from tests import postgres_server
from tests.browser import browser, page, playwright  # noqa: F401 - fixtures for every area
from tests.db.helpers import OutboxFactory, make_settings, throwaway_database, throwaway_schema
from tests.helpers import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'outbox.db'}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[postgres_server.Server]:
    """The session's PostgreSQL server, started when the first test needs it (so a run
    of SQLite tests pays nothing) and stopped at the end; tests/postgres_server.py."""
    try:
        server = postgres_server.shared()
    except postgres_server.PostgresUnavailable as exc:
        # One line, without the chain pytest would print for a pytest.fail() in here.
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    try:
        yield server
    finally:
        postgres_server.stop_shared()


@pytest.fixture
def pg_url(pg_server: postgres_server.Server) -> Iterator[str]:
    """A fresh schema on the tests' PostgreSQL, first on the search_path, dropped after."""
    with throwaway_schema() as url:
        yield url


@pytest.fixture
def pg_database_url(pg_server: postgres_server.Server) -> Iterator[str]:
    """A fresh database on the tests' PostgreSQL, for tests that start processes."""
    with throwaway_database() as url:
        yield url


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest) -> str:
    """Behaviour tests run against both databases (the PostgreSQL case is marked)."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def outbox_factory(clock: FakeClock) -> Iterator[OutboxFactory]:
    """Build outboxes (each with its own engine) on a URL; disposes them at teardown."""
    engines: list[sa.Engine] = []

    def factory(url: str, *, create: bool = True, **overrides: Any) -> Outbox:
        engine = make_engine(make_settings(url, **overrides))
        engines.append(engine)
        outbox = Outbox(engine, clock=clock, lease_seconds=30.0, instance="test-instance")
        if create:
            outbox.create_schema()
        return outbox

    try:
        yield factory
    finally:
        for engine in engines:
            engine.dispose()


@pytest.fixture
def outbox(outbox_factory: OutboxFactory, database_url: str) -> Outbox:
    return outbox_factory(database_url)

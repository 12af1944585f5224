"""Fixtures for the real-process tests: `python -m service` processes, stopped at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import ServiceProcess


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[type[ServiceProcess]]:
    started: list[ServiceProcess] = []

    class Factory(ServiceProcess):
        def __init__(self, env: dict[str, str], port: int | None = None) -> None:
            super().__init__(env, tmp_path / f"service-{len(started)}.log", port)
            started.append(self)

    try:
        yield Factory
    finally:
        for service in started:
            service.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database URL for a service process: a SQLite file, or a fresh PostgreSQL
    database (the case marked postgres)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'outbox.db'}"
    url: str = request.getfixturevalue("pg_database_url")
    return url

"""Fixtures for the HTTP API: a real fakesmtp relay, a SQLite file, the app in a TestClient
or under a real uvicorn in a thread (for sockets, streaming and concurrency)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fakesmtp import FakeSMTPServer
from service import db
from service.app import create_app
from service.config import Settings
from tests.api.helpers import KEY, OTHER_KEY, LiveServer, MakeClient, MakeSettings


@pytest.fixture
def relay() -> Iterator[FakeSMTPServer]:
    with FakeSMTPServer(port=0) as server:
        yield server


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "mail.db"


@pytest.fixture
def make_settings(relay: FakeSMTPServer, db_path: Path) -> MakeSettings:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "api_key": f"{KEY},{OTHER_KEY}",
            "database_url": f"sqlite:///{db_path}",
            "smtp_host": relay.host,
            "smtp_port": relay.port,
            "smtp_timeout": 5.0,
            "smtp_max_retries": 1,
            "smtp_backoff_base": 0.0,
            "smtp_backoff_max": 0.0,
            "worker_concurrency": 2,
            "poll_interval": 0.05,
            "shutdown_grace_seconds": 2.0,
            "mail_from": "app@example.com",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def make_client(relay: FakeSMTPServer) -> Iterator[MakeClient]:
    """Start the app (lifespan included) for given settings; everything stops at teardown.

    It depends on `relay` so that the app stops before the relay does: a worker still
    connecting to a relay that has gone would leave a socket half accepted."""
    with ExitStack() as stack:

        def make(settings: Settings, **app_options: Any) -> TestClient:
            app = create_app(settings, **app_options)
            return stack.enter_context(TestClient(app))

        yield make


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings()


@pytest.fixture
def client(make_client: MakeClient, settings: Settings) -> TestClient:
    return make_client(settings)


@pytest.fixture
def live_server(relay: FakeSMTPServer) -> Iterator[Callable[[FastAPI], LiveServer]]:
    started: list[LiveServer] = []

    def start(app: FastAPI) -> LiveServer:
        server = LiveServer(app)
        server.start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def app_outbox(settings: Settings) -> Iterator[db.Outbox]:
    """An outbox on the app's database (`settings`), for tests below the endpoints."""
    engine = db.make_engine(settings)
    box = db.Outbox(engine)
    box.create_schema()
    yield box
    engine.dispose()

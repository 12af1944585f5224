"""Fixtures for the HTTP API: a real fakesmtp relay, a SQLite file, the app in a TestClient
or under a real uvicorn in a thread (for sockets, streaming and concurrency)."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fakesmtp import FakeSMTPServer
from service.app import create_app
from service.config import Settings

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "rotated-key-fedcba9876543210"
AUTH = {"X-API-Key": KEY}

MakeSettings = Callable[..., Settings]
MakeClient = Callable[..., TestClient]


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


def stored_rows(db_path: Path) -> list[dict[str, Any]]:
    """Every message row, read straight from the SQLite file (not through the app)."""
    if not db_path.exists():
        return []
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM messages")]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def wait_status(client: TestClient, message_id: str, wanted: str) -> dict[str, Any]:
    record: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal record
        record = client.get(f"/messages/{message_id}", headers=AUTH).json()
        return bool(record.get("status") == wanted)

    wait_until(reached)
    return record


class LiveServer:
    """The app under a real uvicorn in a thread, on a socket bound to a free port."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # re-raised in the test's thread by stop()
            self.error = exc

    def start(self) -> None:
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive())
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()
        if self.error is not None:
            raise self.error


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

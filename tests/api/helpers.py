"""Helpers for the HTTP API tests: the keys, the contract's field names, reading the
SQLite file behind the app, and the app under a real uvicorn in a thread."""

from __future__ import annotations

import socket
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.config import Settings
from tests.helpers import wait_until

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "rotated-key-fedcba9876543210"
AUTH = {"X-API-Key": KEY}

# The `make_settings` and `make_client` fixtures.
MakeSettings = Callable[..., Settings]
MakeClient = Callable[..., TestClient]

# The fields of GET /messages/{id} and of the send endpoints' answers (the contract).
STATUS_KEYS = {
    "id",
    "status",
    "attempts",
    "last_error",
    "created_at",
    "updated_at",
    "sent_at",
    "message_id",
    "to",
    "subject",
}
SEND_RESPONSE_KEYS = {"ok", "id", "status", "message_id", "error", "rejected"}


def stored_rows(db_path: Path) -> list[dict[str, Any]]:
    """Every message row, read straight from the SQLite file (not through the app)."""
    if not db_path.exists():
        return []
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM messages")]


def wait_status(
    client: TestClient, message_id: str, wanted: str, headers: dict[str, str] = AUTH
) -> dict[str, Any]:
    """The record once it reaches `wanted`, read with the key in `headers`."""
    record: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal record
        record = client.get(f"/messages/{message_id}", headers=headers).json()
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

"""POST /send's delivery below the contract: the injected sender factory serves it, a
bug in the sender is a recorded 500, a database gone meanwhile is a 503."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service import mailer
from service.config import Settings
from service.types import Sender
from tests.api.helpers import AUTH, MakeClient, MakeSettings, stored_rows
from tests.helpers import FailingSender

pytestmark = pytest.mark.unit

MESSAGE: dict[str, Any] = {"to": "ana@example.com", "subject": "Hi", "body": "text"}


class CountingFactory:
    """Real SMTP connections, counted, to see the injected factory is what sends."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.made: list[mailer.SMTPConnection] = []

    def __call__(self) -> Sender:
        connection = mailer.SMTPConnection(self.settings)
        self.made.append(connection)
        return connection


def test_injected_sender_factory_serves_the_sync_path_and_is_reused(
    make_client: MakeClient, settings: Settings
) -> None:
    factory = CountingFactory(settings)
    client = make_client(settings, sender_factory=factory)
    for _ in range(3):
        assert client.post("/send", json=MESSAGE, headers=AUTH).status_code == 200
    assert len(factory.made) == 1


def test_a_bug_in_the_sender_answers_500_failed_and_is_recorded(
    make_client: MakeClient, settings: Settings, db_path: Path
) -> None:
    client = make_client(settings, sender_factory=FailingSender)
    response = client.post("/send", json=MESSAGE, headers=AUTH)
    assert response.status_code == 500
    assert response.json()["status"] == "failed"
    assert "RuntimeError" in response.json()["error"]
    [row] = stored_rows(db_path)
    assert row["status"] == "failed"


def test_sync_send_into_a_database_that_is_gone_is_503(
    make_client: MakeClient, make_settings: MakeSettings, db_path: Path
) -> None:
    client = make_client(make_settings())
    assert client.post("/send", json=MESSAGE, headers=AUTH).status_code == 200
    moved = db_path.with_suffix(".moved")
    db_path.rename(moved)
    try:
        response = client.post("/send", json=MESSAGE, headers=AUTH)
    finally:
        moved.rename(db_path)
    assert response.status_code == 503
    assert len(stored_rows(db_path)) == 1

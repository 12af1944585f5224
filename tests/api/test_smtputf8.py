"""Non-ASCII local parts need SMTPUTF8: a clear 422 when the relay does not offer it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakesmtp import FakeSMTPServer
from tests.api.helpers import AUTH, MakeClient, MakeSettings, stored_rows, wait_status

pytestmark = pytest.mark.unit

UTF8_MESSAGE = {"to": ["josé@example.com"], "subject": "hola", "body": "¡hola!"}
ASCII_MESSAGE = {"to": ["jose@example.com"], "subject": "hola", "body": "hola"}


@pytest.fixture
def plain_relay() -> Iterator[FakeSMTPServer]:
    """A relay that, like many, does not offer SMTPUTF8."""
    with FakeSMTPServer(smtputf8=False) as server:
        yield server


@pytest.mark.parametrize("path", ["/send", "/send_async"])
def test_non_ascii_local_part_without_smtputf8_is_422_and_nothing_is_stored(
    plain_relay: FakeSMTPServer,
    make_settings: MakeSettings,
    make_client: MakeClient,
    db_path: Path,
    path: str,
) -> None:
    client = make_client(make_settings(smtp_port=plain_relay.port))
    answer = client.post(path, json=UTF8_MESSAGE, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert "SMTPUTF8" in answer.json()["detail"][0]["msg"]
    assert stored_rows(db_path) == []
    # ASCII mail still flows through the same relay.
    assert client.post(path, json=ASCII_MESSAGE, headers=AUTH).status_code in (200, 202)
    plain_relay.wait_for(1)
    assert [m.rcpt_tos for m in plain_relay.messages()] == [["jose@example.com"]]


def test_non_ascii_local_part_is_delivered_when_the_relay_offers_smtputf8(
    relay: FakeSMTPServer, make_settings: MakeSettings, make_client: MakeClient
) -> None:
    client = make_client(make_settings())
    answer = client.post("/send_async", json=UTF8_MESSAGE, headers=AUTH)
    assert answer.status_code == 202, answer.text
    wait_status(client, answer.json()["id"], "sent")
    assert relay.wait_for(1)[0].rcpt_tos == ["josé@example.com"]


def test_an_unreachable_relay_does_not_block_acceptance(
    make_settings: MakeSettings, make_client: MakeClient, db_path: Path
) -> None:
    """When the relay cannot be asked, the message is queued (the worker will find out)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    client = make_client(make_settings(smtp_port=closed_port, smtp_timeout=1.0))
    answer = client.post("/send_async", json=UTF8_MESSAGE, headers=AUTH)
    assert answer.status_code == 202, answer.text
    assert len(stored_rows(db_path)) == 1

"""service.main below the process: the log formatter (the processes: tests/e2e)."""

from __future__ import annotations

import logging

import pytest

from service.main import MessageIdFormatter

pytestmark = pytest.mark.unit


def test_formatter_appends_the_message_id_when_present() -> None:
    formatter = MessageIdFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "sent %s", ("a",), None)
    assert formatter.format(record) == "INFO sent a"
    record.message_id = "<m1@host>"
    assert formatter.format(record) == "INFO sent a message_id=<m1@host>"

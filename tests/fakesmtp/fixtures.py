"""Fixtures for the tests of fakesmtp's HTTP side: a server with its HTTP API on a
free port, and an httpx client for it. Imported by tests/fakesmtp/conftest.py; a
module that needs another server (with mail in it, say) defines its own `server`."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from fakesmtp import FakeSMTPServer
from fakesmtp.pytest_plugin import FakeSMTPFactory

__all__ = ["http", "server"]


@pytest.fixture
def server(fakesmtp_factory: FakeSMTPFactory) -> FakeSMTPServer:
    result: FakeSMTPServer = fakesmtp_factory(http_port=0)
    return result


@pytest.fixture
def http(server: FakeSMTPServer) -> Iterator[httpx.Client]:
    assert server.http_url is not None
    with httpx.Client(base_url=server.http_url, timeout=5) as client:
        yield client

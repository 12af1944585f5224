"""pytest fixtures: ``fakesmtp`` (a running default server) and ``fakesmtp_factory``.

Registered through the ``pytest11`` entry point, so any project that installs
fakesmtp gets them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fakesmtp.server import FakeSMTPServer

FakeSMTPFactory = Callable[..., FakeSMTPServer]


@pytest.fixture
def fakesmtp_factory() -> Iterator[FakeSMTPFactory]:
    """Start servers with any FakeSMTPServer options; every one is stopped at teardown.

    A server that hit an internal error re-raises it at teardown, so the
    test that provoked it errors instead of passing on a broken fake.
    """
    started: list[FakeSMTPServer] = []

    def factory(**options: Any) -> FakeSMTPServer:
        server = FakeSMTPServer(**options)
        server.start()
        started.append(server)
        return server

    yield factory
    errors: list[BaseException] = []
    for server in reversed(started):
        try:
            server.stop()
        except BaseException as exc:  # stop them all before reporting one
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def fakesmtp(fakesmtp_factory: FakeSMTPFactory) -> FakeSMTPServer:
    """A running fakesmtp on a free port, no HTTP API, no TLS, no AUTH, no faults."""
    return fakesmtp_factory()

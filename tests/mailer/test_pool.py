"""ConnectionPool: idle SMTP sessions shared by the synchronous path's threads, against
fakesmtp."""

from __future__ import annotations

import threading
import time

import pytest

from fakesmtp import FakeSMTPServer, FaultRule
from service.mailer import (
    ConnectionPool,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    connection_factory,
)
from tests.mailer.helpers import FakeFactory, message, settings_for

pytestmark = pytest.mark.unit


def test_pool_reuses_connections_sequentially(fakesmtp: FakeSMTPServer) -> None:
    pool = ConnectionPool(connection_factory(settings_for(fakesmtp)))
    for _ in range(5):
        pool.send(message())
    pool.close()
    assert fakesmtp.stats()["connections"] == 1
    assert len(fakesmtp.wait_for(5)) == 5


def test_pool_serves_threads_concurrently(fakesmtp: FakeSMTPServer) -> None:
    pool = ConnectionPool(connection_factory(settings_for(fakesmtp)), max_idle=2)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                pool.send(message())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    pool.close()
    assert errors == []
    assert len(fakesmtp.wait_for(20)) == 20
    assert fakesmtp.stats()["connections"] <= 4 + 4  # at most one per thread, plus re-opens


def test_pool_keeps_a_session_after_a_refusal_and_drops_a_broken_one(
    fakesmtp: FakeSMTPServer,
) -> None:
    pool = ConnectionPool(connection_factory(settings_for(fakesmtp)))
    fakesmtp.add_fault(FaultRule(stage="rcpt", code=550, times=1))
    with pytest.raises(PermanentDeliveryError):
        pool.send(message())
    pool.send(message())
    assert fakesmtp.stats()["connections"] == 1
    fakesmtp.add_fault(FaultRule(stage="message", action="disconnect", times=1))
    with pytest.raises(TemporaryDeliveryError):
        pool.send(message())
    pool.send(message())
    pool.close()
    assert fakesmtp.stats()["connections"] == 2


def test_pool_with_tls_shares_one_context(
    fakesmtp_factory: FakeFactory, certs: tuple[str, str]
) -> None:
    cert, key = certs
    server = fakesmtp_factory(tls_cert=cert, tls_key=key)
    pool = ConnectionPool(
        connection_factory(settings_for(server, smtp_security="starttls", smtp_ca_file=cert))
    )
    pool.send(message())
    pool.close()
    assert server.wait_for(1)[0].tls


def test_pool_close_closes_connections_returned_later(fakesmtp: FakeSMTPServer) -> None:
    pool = ConnectionPool(connection_factory(settings_for(fakesmtp)))
    pool.close()
    pool.send(message())  # a send racing close still works, its session is not kept
    assert len(fakesmtp.wait_for(1)) == 1
    deadline = time.monotonic() + 5
    while fakesmtp.stats()["active_connections"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fakesmtp.stats()["active_connections"] == 0

"""A 202 means delivered, even across SIGKILL and SIGTERM: real processes, on SQLite
and PostgreSQL, with a production-length lease that recovery must not wait for."""

from __future__ import annotations

import collections
import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from fakesmtp import FakeSMTPServer, FaultRule
from tests.e2e.helpers import (
    API_KEY,
    ServiceProcess,
    free_port,
    python_m,
    statuses,
    still_missing,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

ACCEPTED = 60
CONCURRENCY = 2
# Long, as in production: recovery must not wait for it.
LEASE = 60
# "Within a few seconds of the restart": what the in-flight messages may take,
# counted from the moment the restarted process answers /health.
RECOVERY_BOUND = 10.0


def service_env(database: str, smtp_port: int) -> dict[str, str]:
    return {
        "DATABASE_URL": database,
        "SMTP_PORT": str(smtp_port),
        "SMTP_HOST": "127.0.0.1",
        # Long enough that the blocked deliveries are still waiting when we kill.
        "SMTP_TIMEOUT": "60",
        "WORKER_CONCURRENCY": str(CONCURRENCY),
        "LEASE_SECONDS": str(LEASE),
        "POLL_INTERVAL": "0.1",
        "SHUTDOWN_GRACE_SECONDS": "2",
    }


def accept_messages(service: ServiceProcess) -> dict[str, str]:
    """POST ACCEPTED messages; returns {our id: Message-ID} of those answered 202."""
    accepted = {}
    with service.client() as client:
        for n in range(ACCEPTED):
            answer = client.post(
                "/send_async",
                json={"to": [f"user{n}@example.com"], "subject": f"crash-{n}", "body": "x"},
            )
            assert answer.status_code == 202, answer.text
            accepted[answer.json()["id"]] = answer.json()["message_id"]
    return accepted


def wait_connections(smtp: FakeSMTPServer, at_least: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while smtp.stats()["connections"] < at_least:
        assert time.monotonic() < deadline, smtp.stats()
        time.sleep(0.05)


def wait_delivered(smtp: FakeSMTPServer, message_ids: set[str], timeout: float) -> float:
    """Seconds until every one of `message_ids` arrived (fails after `timeout`)."""
    started = time.monotonic()
    missing = still_missing(smtp, message_ids, lambda m: [m.message_id or ""], timeout)
    assert not missing, f"missing {len(missing)}"
    return time.monotonic() - started


def count_status(database: str, status: str) -> int:
    return statuses(database)[status]


@contextlib.contextmanager
def stuck_service(
    database: str,
    service_factory: Callable[..., ServiceProcess],
    stage: str,
    *,
    chunking: bool = False,
) -> Iterator[tuple[FakeSMTPServer, ServiceProcess, dict[str, str]]]:
    """A service that answered 202 to ACCEPTED messages, every delivery thread stuck
    at `stage` (mail: before the final dot; message: the relay holds its reply to
    the dot) for 300 s; yields (relay, service, accepted). The relay offers
    CHUNKING only if asked: with it the whole message, its end included, goes with
    the envelope, so a thread stuck at MAIL is already past its "dot"."""
    blocked = FaultRule(stage=stage, action="delay", delay=300)
    with FakeSMTPServer(faults=[blocked], chunking=chunking) as smtp:
        service = service_factory(service_env(database, smtp.port))
        service.start()
        accepted = accept_messages(service)
        wait_connections(smtp, CONCURRENCY)
        deadline = time.monotonic() + 15
        while smtp.stats()["faults_fired"] < CONCURRENCY:  # every thread is stuck
            assert time.monotonic() < deadline, smtp.stats()
            time.sleep(0.05)
        yield smtp, service, accepted


def restart_and_deliver(
    database: str,
    service_factory: Callable[..., ServiceProcess],
    smtp: FakeSMTPServer,
    accepted: dict[str, str],
    port: int,
) -> tuple[ServiceProcess, float]:
    """Unblock the relay, start a new service as the same instance (same database,
    same port, so the same default INSTANCE_ID); returns it and the seconds from
    its first /health answer until every 202 has arrived."""
    smtp.clear_faults()
    service = service_factory(service_env(database, smtp.port), port=port)
    service.start()
    took = wait_delivered(smtp, set(accepted.values()), timeout=LEASE)
    return service, took


def copies(smtp: FakeSMTPServer) -> collections.Counter[str | None]:
    return collections.Counter(m.message_id for m in smtp.messages())


def test_sigkill_with_the_relay_holding_the_dot_recovers_at_once_after_restart(
    database: str, service_factory: Callable[..., ServiceProcess]
) -> None:
    """SIGKILL while every connection waits for the relay's 250: the restart takes
    back its own claims at once (not a lease later); at most one duplicate per
    connection, every record sent."""
    with stuck_service(database, service_factory, "message") as (smtp, first, accepted):
        first.kill()
        _, took = restart_and_deliver(database, service_factory, smtp, accepted, first.port)
        print(f"in-flight messages delivered {took:.2f}s after the restart ({database[:8]})")
        assert took < RECOVERY_BOUND
        duplicates = sum(count - 1 for count in copies(smtp).values())
        assert duplicates <= CONCURRENCY
        wait_until(lambda: count_status(database, "sent") == ACCEPTED, what="all recorded")


def test_sigkill_before_the_dot_recovers_at_once_and_sends_nothing_twice(
    database: str, service_factory: Callable[..., ServiceProcess]
) -> None:
    with stuck_service(database, service_factory, "mail") as (smtp, first, accepted):
        first.kill()
        assert smtp.messages() == []
        second, took = restart_and_deliver(database, service_factory, smtp, accepted, first.port)
        assert took < RECOVERY_BOUND
        # The blocked ones never reached DATA, so nothing can have been sent twice.
        assert max(copies(smtp).values()) == 1
        with second.client() as client:
            statuses = {client.get(f"/messages/{id_}").json()["status"] for id_ in accepted}
        assert statuses == {"sent"}


def test_sigterm_hands_back_every_claim_before_its_dot_and_exits_within_grace(
    database: str, service_factory: Callable[..., ServiceProcess]
) -> None:
    """SIGTERM: exit 0 within the grace period, no message left in `sending` that had
    not reached the relay; the restart delivers them at once, none twice."""
    with stuck_service(database, service_factory, "mail") as (smtp, first, accepted):
        code, took = first.terminate(timeout=30)
        assert code == 0
        assert took < 2 + 3, f"took {took:.1f}s with a 2s grace period"
        assert count_status(database, "sending") == 0
        assert count_status(database, "queued") == ACCEPTED

        _, took = restart_and_deliver(database, service_factory, smtp, accepted, first.port)
        assert took < RECOVERY_BOUND
        assert max(copies(smtp).values()) == 1
        assert len(copies(smtp)) == ACCEPTED


def test_sigterm_with_chunking_leaves_the_messages_written_whole_in_sending(
    database: str, service_factory: Callable[..., ServiceProcess]
) -> None:
    """With CHUNKING a message's end goes in the envelope's write: a relay stuck at
    MAIL may still take it, so those stay `sending` (one per connection) and the
    restart takes them back; the rest went back to `queued`. None arrives twice."""
    with stuck_service(database, service_factory, "mail", chunking=True) as (
        smtp,
        first,
        accepted,
    ):
        code, _ = first.terminate(timeout=30)
        assert code == 0
        assert count_status(database, "sending") == CONCURRENCY
        assert count_status(database, "queued") == ACCEPTED - CONCURRENCY
        _, took = restart_and_deliver(database, service_factory, smtp, accepted, first.port)
        assert took < RECOVERY_BOUND
        assert max(copies(smtp).values()) == 1
        assert len(copies(smtp)) == ACCEPTED


def test_sigterm_leaves_only_the_messages_past_their_dot_in_sending(
    database: str, service_factory: Callable[..., ServiceProcess]
) -> None:
    with stuck_service(database, service_factory, "message") as (smtp, first, accepted):
        code, _ = first.terminate(timeout=30)
        assert code == 0
        assert count_status(database, "sending") == CONCURRENCY  # one per connection
        _, took = restart_and_deliver(database, service_factory, smtp, accepted, first.port)
        assert took < RECOVERY_BOUND


def test_sigterm_lets_a_delivery_in_flight_finish(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    """A delivery that completes within the grace period is finished and recorded as sent."""
    slow = FaultRule(stage="message", action="delay", delay=1.0, times=1)
    with FakeSMTPServer(faults=[slow]) as smtp:
        service = service_factory(
            {
                **service_env(f"sqlite:///{tmp_path / 'outbox.db'}", smtp.port),
                "WORKER_CONCURRENCY": "1",
            }
        )
        service.start()
        with service.client() as client:
            answer = client.post("/send_async", json={"to": "a@example.com", "body": "x"})
        assert answer.status_code == 202
        wait_connections(smtp, 1)
        time.sleep(0.3)  # the message's final dot has been sent; the reply is delayed 1 s
        code, _ = service.terminate(timeout=30)
        assert code == 0
        assert [m.message_id for m in smtp.messages()] == [answer.json()["message_id"]]

        again = service_factory(
            service_env(f"sqlite:///{tmp_path / 'outbox.db'}", smtp.port), port=service.port
        )
        again.start()
        with again.client() as client:
            assert client.get(f"/messages/{answer.json()['id']}").json()["status"] == "sent"
        time.sleep(0.5)  # give a wrong re-delivery the chance to show up
        assert len(smtp.messages()) == 1


def test_one_grace_period_covers_http_requests_and_deliveries_in_flight(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    """A /send stuck on the relay and stuck deliveries share one grace period, not two."""
    grace = 3.0
    blocked = FaultRule(stage="mail", action="delay", delay=300)
    with FakeSMTPServer(faults=[blocked]) as smtp:
        service = service_factory(
            {
                **service_env(f"sqlite:///{tmp_path / 'outbox.db'}", smtp.port),
                "SHUTDOWN_GRACE_SECONDS": str(grace),
            }
        )
        service.start()
        with service.client() as client:
            for n in range(4):
                client.post("/send_async", json={"to": f"q{n}@example.com", "body": "x"})
        wait_connections(smtp, CONCURRENCY)

        def post_sync() -> None:
            with contextlib.suppress(httpx.TransportError), service.client() as client:
                client.post("/send", json={"to": "sync@example.com", "body": "x"})

        in_flight = threading.Thread(target=post_sync, daemon=True)
        in_flight.start()
        wait_connections(smtp, CONCURRENCY + 1)  # the /send is waiting on MAIL too
        code, took = service.terminate(timeout=30)
        in_flight.join(10)
    assert code == 0
    # Before one deadline was shared: the HTTP drain took the grace, then the
    # deliveries took it again (2 x 3 s).
    assert took < grace + 2, f"took {took:.1f}s with a {grace:g}s grace period"


def refused_start(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        python_m("service"),
        env={
            **os.environ,
            "API_KEY": API_KEY,
            "HOST": "127.0.0.1",
            "PORT": str(free_port()),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_second_service_on_the_same_sqlite_file_refuses_to_start(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    database = f"sqlite:///{tmp_path / 'outbox.db'}"
    first = service_factory({"DATABASE_URL": database, "SMTP_PORT": "1"})
    first.start()
    second = refused_start({"DATABASE_URL": database, "SMTP_PORT": "1"}, tmp_path)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"mail-service: {tmp_path / 'outbox.db'} is in use by another mail-service process: "
        "one instance per SQLite file (use PostgreSQL to run several)"
    ]
    with first.client() as client:
        assert client.get("/health").status_code == 200


@pytest.mark.postgres
def test_a_second_process_with_the_same_instance_id_refuses_to_start(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess], pg_database_url: str
) -> None:
    env = {"DATABASE_URL": pg_database_url, "SMTP_PORT": "1", "INSTANCE_ID": "worker-1"}
    first = service_factory(env)
    first.start()
    second = refused_start(env, tmp_path)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        "mail-service: another live process runs as instance 'worker-1': give each "
        "instance its own INSTANCE_ID"
    ]
    other = service_factory({**env, "INSTANCE_ID": "worker-2"})
    other.start()  # another name on the same database is another instance


def test_a_sync_send_cut_by_sigkill_is_failed_by_the_next_start_at_once(
    database: str, service_factory: Callable[..., ServiceProcess]
) -> None:
    """Never finished in the background (its caller got no 200), and not left in
    `sending` for a lease either: the restart records that nobody knows."""
    blocked = FaultRule(stage="mail", action="delay", delay=300)
    with FakeSMTPServer(faults=[blocked]) as smtp:
        first = service_factory(service_env(database, smtp.port))
        first.start()

        def post_sync() -> None:
            with contextlib.suppress(httpx.TransportError), first.client() as client:
                client.post("/send", json={"to": "sync@example.com", "body": "x"})

        in_flight = threading.Thread(target=post_sync, daemon=True)
        in_flight.start()
        wait_connections(smtp, 1)
        wait_until(lambda: count_status(database, "sending") == 1, what="sync row stored")
        first.kill()
        in_flight.join(10)
        smtp.clear_faults()
        service_factory(service_env(database, smtp.port), port=first.port).start()
        assert count_status(database, "sending") == 0
        assert count_status(database, "failed") == 1
        assert smtp.messages() == []

"""Several `python -m service` processes on one PostgreSQL database, one fakesmtp.

Each logical message carries an Idempotency-Key; a request that fails in transit
(the instance died) is sent again with the same key to the next instance, which
either replays the stored answer (the first one committed) or accepts it afresh.
So the set of Message-IDs answered with 202 is exactly what must arrive.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from fakesmtp import FakeSMTPServer
from tests.db.helpers import restart_postgres, wait_for_postgres
from tests.e2e.helpers import API_KEY, ServiceProcess, statuses, still_missing

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

MESSAGES = 3000
CLIENT_THREADS = 12
CONNECTIONS_PER_INSTANCE = 4  # WORKER_CONCURRENCY of the instance killed mid-run


def _bare(message_id: str) -> str:
    return message_id.strip().strip("<>")


@pytest.fixture
def start_services(
    tmp_path: Path, pg_database_url: str
) -> Iterator[Callable[..., list[ServiceProcess]]]:
    """Start n services on the test database (in parallel: they race to migrate)."""
    started: list[ServiceProcess] = []

    def start(smtp: FakeSMTPServer | None, n: int, **env: str) -> list[ServiceProcess]:
        base = {
            "DATABASE_URL": pg_database_url,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port if smtp is not None else 1),
            "LOG_LEVEL": "WARNING",
            "QUEUE_MAXSIZE": "20000",
            "POLL_INTERVAL": "0.2",
            "SHUTDOWN_GRACE_SECONDS": "2",
        }
        services = [
            ServiceProcess({**base, **env}, tmp_path / f"service-{len(started) + i}.log")
            for i in range(n)
        ]
        started.extend(services)
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda service: service.start(timeout=60), services))
        return services

    try:
        yield start
    finally:
        for service in started:
            service.stop()


@pytest.fixture
def smtp(fakesmtp_factory: Callable[..., FakeSMTPServer]) -> FakeSMTPServer:
    """One fakesmtp for a whole run's messages (it keeps 50,000, not its default)."""
    return fakesmtp_factory(max_messages=50_000)


class Traffic:
    """Posts messages round-robin over the instances, failing over on transport errors."""

    def __init__(self, services: Sequence[ServiceProcess]) -> None:
        self.services = list(services)
        self.dead: set[int] = set()
        self.accepted: dict[str, dict[str, Any]] = {}  # idempotency key -> 202 body
        self.statuses: collections.Counter[int] = collections.Counter()
        self.transport_errors = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._clients: list[httpx.Client] = []

    def __enter__(self) -> Traffic:
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self._clients:
            client.close()

    def _client(self, index: int) -> httpx.Client:
        clients: dict[int, httpx.Client] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if index not in clients:
            clients[index] = httpx.Client(
                base_url=self.services[index].url, headers={"X-API-Key": API_KEY}, timeout=30
            )
            with self._lock:
                self._clients.append(clients[index])
        return clients[index]

    def post(self, n: int, *, retry_503: bool = True) -> int:
        """Send logical message n until some instance answers; returns the last status."""
        key = uuid.uuid4().hex
        body = {"to": f"rcpt{n}@example.com", "subject": f"message {n}", "body": "hello"}
        attempt = 0
        while True:
            index = (n + attempt) % len(self.services)
            attempt += 1
            if index in self.dead:
                continue
            try:
                response = self._client(index).post(
                    "/send_async", json=body, headers={"Idempotency-Key": key}
                )
            except httpx.TransportError:
                with self._lock:
                    self.transport_errors += 1
                time.sleep(0.05)
                continue
            with self._lock:
                self.statuses[response.status_code] += 1
            if response.status_code == 202:
                with self._lock:
                    self.accepted[key] = response.json()
                return 202
            if response.status_code == 503 and retry_503:
                time.sleep(0.1)
                continue
            return response.status_code

    def run(self, count: int, threads: int = CLIENT_THREADS) -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(self.post, range(count)))

    def expected_message_ids(self) -> set[str]:
        with self._lock:
            return {_bare(body["message_id"]) for body in self.accepted.values()}


@pytest.fixture
def make_traffic() -> Iterator[Callable[[Sequence[ServiceProcess]], Traffic]]:
    made: list[Traffic] = []

    def make(services: Sequence[ServiceProcess]) -> Traffic:
        made.append(Traffic(services))
        return made[-1]

    try:
        yield make
    finally:
        for traffic in made:
            traffic.__exit__()


def wait_delivered(smtp: FakeSMTPServer, expected: set[str], timeout: float) -> list[str]:
    """Wait until every expected Message-ID arrived; return every Message-ID captured."""
    missing = still_missing(smtp, expected, lambda m: [_bare(m.message_id or "")], timeout)
    if missing:
        pytest.fail(f"{len(missing)} of {len(expected)} accepted messages never arrived")
    return [_bare(m.message_id or "") for m in smtp.messages()]


def test_three_instances_deliver_3000_messages_each_exactly_once(
    smtp: FakeSMTPServer,
    start_services: Callable[..., list[ServiceProcess]],
    pg_database_url: str,
    make_traffic: Callable[[Sequence[ServiceProcess]], Traffic],
) -> None:
    services = start_services(smtp, 3)
    traffic = make_traffic(services)
    started = time.monotonic()
    traffic.run(MESSAGES)
    expected = traffic.expected_message_ids()
    assert len(expected) == MESSAGES
    captured = wait_delivered(smtp, expected, timeout=90)
    elapsed = time.monotonic() - started
    counts = collections.Counter(captured)
    duplicates = {mid: c for mid, c in counts.items() if c > 1}
    print(f"3 instances: {MESSAGES} accepted and delivered in {elapsed:.1f}s")
    assert duplicates == {}
    assert set(counts) == expected
    assert traffic.statuses == {202: MESSAGES}
    # Every instance took part in accepting (round-robin) and the rows are all sent.
    assert statuses(pg_database_url) == {"sent": MESSAGES}


def test_instance_killed_mid_run_loses_nothing_and_duplicates_only_its_in_flight(
    smtp: FakeSMTPServer,
    start_services: Callable[..., list[ServiceProcess]],
    pg_database_url: str,
    make_traffic: Callable[[Sequence[ServiceProcess]], Traffic],
) -> None:
    services = start_services(
        smtp, 3, LEASE_SECONDS="3", WORKER_CONCURRENCY=str(CONNECTIONS_PER_INSTANCE)
    )
    victim = services[0]
    traffic = make_traffic(services)
    sending = threading.Thread(target=traffic.run, args=(MESSAGES,))
    sending.start()
    try:
        try:
            smtp.wait_for_count(MESSAGES // 3, timeout=60)
        except TimeoutError:
            pytest.fail("delivery never got going")
        victim.kill()
        traffic.dead.add(0)
        # The dead process's claims, frozen at the moment of death: claimed, maybe
        # sent, never recorded. Nobody else may take them until their lease ends.
        engine = sa.create_engine(pg_database_url, poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                in_flight = {
                    _bare(mid)
                    for (mid,) in conn.execute(
                        sa.text(
                            "SELECT message_id FROM messages "
                            "WHERE status = 'sending' AND owner = :owner"
                        ),
                        # The default INSTANCE_ID: host name and listening port.
                        {"owner": f"{socket.gethostname()}:{victim.port}"},
                    )
                }
        finally:
            engine.dispose()
    finally:
        sending.join(120)
    expected = traffic.expected_message_ids()
    assert len(traffic.accepted) == MESSAGES
    captured = wait_delivered(smtp, expected, timeout=90)
    counts = collections.Counter(captured)
    duplicates = {mid for mid, c in counts.items() if c > 1}
    print(
        f"killed instance had {len(in_flight)} message(s) in flight; "
        f"{len(duplicates)} delivered twice; {traffic.transport_errors} request(s) failed over"
    )
    assert max(counts.values()) <= 2
    assert duplicates <= in_flight
    # Each connection records a relay's 250 before its next final dot: at most the
    # one message per connection whose acceptance was not yet written goes twice.
    assert len(duplicates) <= CONNECTIONS_PER_INSTANCE
    assert set(counts) == expected
    assert statuses(pg_database_url) == {"sent": MESSAGES}


def test_postgres_restart_mid_run_loses_nothing(
    smtp: FakeSMTPServer,
    start_services: Callable[..., list[ServiceProcess]],
    pg_database_url: str,
    make_traffic: Callable[[Sequence[ServiceProcess]], Traffic],
) -> None:
    """During the outage /send_async answers 503, never 202 for an unstored message;
    delivery resumes by itself; every 202 is delivered."""
    (service,) = start_services(smtp, 1)
    traffic = make_traffic([service])
    stop = threading.Event()
    codes: collections.Counter[int] = collections.Counter()
    counter = iter(range(10**9))
    counter_lock = threading.Lock()

    def keep_sending() -> None:
        while not stop.is_set():
            with counter_lock:
                n = next(counter)
            codes[traffic.post(n, retry_503=False)] += 1
            time.sleep(0.005)

    senders = [threading.Thread(target=keep_sending) for _ in range(4)]
    for thread in senders:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while len(traffic.accepted) < 300:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        restart_postgres()
        wait_for_postgres()
        back = len(traffic.accepted)
        deadline = time.monotonic() + 30
        while len(traffic.accepted) < back + 300:
            assert time.monotonic() < deadline, "accepting never resumed after the restart"
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in senders:
            thread.join(60)
    expected = traffic.expected_message_ids()
    captured = wait_delivered(smtp, expected, timeout=60)
    # A 503 whose commit reached the server before the connection broke may still
    # be delivered: allowed (it was never promised). A 202 never went missing.
    extra = set(captured) - expected
    print(
        f"postgres restart: {dict(traffic.statuses)} answered; {len(expected)} accepted, "
        f"all delivered; {len(extra)} message(s) answered 503 were stored anyway"
    )
    assert set(traffic.statuses) <= {202, 503}
    assert traffic.statuses[503] > 0, "no request met the outage: the test proved nothing"
    assert len(extra) <= traffic.statuses[503]
    with service.client() as client:
        assert client.get("/health").status_code == 200


def test_idempotency_keys_and_retry_schedules_are_shared_across_instances(
    fakesmtp_factory: Callable[..., FakeSMTPServer],
    start_services: Callable[..., list[ServiceProcess]],
) -> None:
    from fakesmtp import FaultRule

    smtp = fakesmtp_factory()
    smtp.add_fault(
        FaultRule(stage="rcpt", action="reply", code=451, message="4.7.1 Later", times=1)
    )
    a, b = start_services(smtp, 2, SMTP_BACKOFF_BASE="1.5", SMTP_BACKOFF_MAX="1.5")
    body = {"to": "shared@example.com", "subject": "once", "body": "hello"}
    key = {"Idempotency-Key": "shared-key-1"}
    with a.client() as on_a, b.client() as on_b:
        first = on_a.post("/send_async", json=body, headers=key)
        assert first.status_code == 202
        replay = on_b.post("/send_async", json=body, headers=key)
        assert replay.status_code == 202
        assert replay.json() == first.json()
        changed = on_b.post("/send_async", json={**body, "subject": "other"}, headers=key)
        assert changed.status_code == 422
        message = first.json()["id"]
        # A's first attempt meets the 451; the retry time is in the database.
        deadline = time.monotonic() + 20
        while (record := on_b.get(f"/messages/{message}").json())["last_error"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert record["attempts"] == 1
        assert record["status"] == "queued"
        assert "451" in record["last_error"]
        # A stops now; B must honour the schedule A wrote and deliver the retry.
        code, _ = a.terminate(timeout=30)
        assert code == 0
        delivered = smtp.wait_for(1, timeout=20)
        deadline = time.monotonic() + 10
        while (record := on_b.get(f"/messages/{message}").json())["status"] == "sending":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert [_bare(m.message_id or "") for m in delivered] == [_bare(first.json()["message_id"])]
    assert record["status"] == "sent"
    assert record["attempts"] == 2


def test_a_synchronous_send_is_answered_once_and_replayed_by_another_instance(
    fakesmtp_factory: Callable[..., FakeSMTPServer],
    start_services: Callable[..., list[ServiceProcess]],
) -> None:
    """/send on PostgreSQL: its row goes through the writer thread, its key is shared."""
    smtp = fakesmtp_factory()
    a, b = start_services(smtp, 2)
    body = {"to": "sync@example.com", "subject": "now", "body": "hello"}
    key = {"Idempotency-Key": "sync-key-1"}
    with a.client() as on_a, b.client() as on_b:
        sent = on_a.post("/send", json=body, headers=key)
        assert sent.status_code == 200, sent.text
        assert sent.json()["status"] == "sent"
        replay = on_b.post("/send", json=body, headers=key)
        assert replay.status_code == 200
        assert replay.json() == sent.json()
        assert replay.headers["Idempotent-Replayed"] == "true"
        record = on_b.get(f"/messages/{sent.json()['id']}").json()
    assert record["status"] == "sent"
    assert [m.message_id for m in smtp.wait_for(1)] == [sent.json()["message_id"]]
    assert len(smtp.messages()) == 1  # the replay sent nothing


def test_queue_maxsize_is_one_backlog_shared_by_the_instances(
    start_services: Callable[..., list[ServiceProcess]],
) -> None:
    """QUEUE_MAXSIZE bounds accepted-and-unfinished messages in the whole database,
    as each instance sees it at its last re-sync (every 2 s) plus its own accepts."""
    # The relay refuses connections and retries are far away: nothing finishes.
    a, b = start_services(
        None, 2, QUEUE_MAXSIZE="50", SMTP_BACKOFF_BASE="600", SMTP_MAX_RETRIES="5"
    )
    body = {"to": "held@example.com", "subject": "held", "body": "hello"}
    with a.client() as on_a, b.client() as on_b:
        on_a_codes = [on_a.post("/send_async", json=body).status_code for _ in range(30)]
        assert on_a_codes == [202] * 30
        time.sleep(3.0)  # longer than one re-sync interval
        on_b_codes = [on_b.post("/send_async", json=body).status_code for _ in range(40)]
        assert on_b_codes == [202] * 20 + [503] * 20
        refused = on_b.post("/send_async", json=body)
        assert refused.headers.get("Retry-After")
        time.sleep(3.0)
        # A now sees B's 20 too: full, although it accepted only 30 itself.
        assert on_a.post("/send_async", json=body).status_code == 503

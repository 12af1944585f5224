"""Chaos: one real `python -m service`, a fakesmtp with random temporary faults,
messages posted all along, SIGKILL and SIGTERM at random moments, a restart after
each. Then: how many 202s never arrived, how many arrived twice, how many records
are not final, and how long each restart took to deliver what its predecessor
had in flight.

tests/e2e/test_chaos.py runs a bounded round in the default test run; the soak
(`nox -s soak`) runs long ones and prints the figures:

    python -m tests.e2e.chaos --database sqlite --messages 100000 --kills 50 --terms 10
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

from fakesmtp import FakeSMTPServer, FaultRule
from service.db.schema import messages_table
from tests.e2e.helpers import API_KEY, ServiceProcess, free_port, statuses, still_missing

__all__ = ["ChaosResult", "run_chaos"]

# Temporary failures the relay answers at random: every message gets through in
# the end, some after retries, some after a lost connection.
FAULTS = (
    FaultRule(stage="rcpt", action="reply", code=451, message="4.3.0 try later", probability=0.03),
    FaultRule(stage="data", action="disconnect", probability=0.01),
    FaultRule(stage="message", action="reply", code=452, message="4.3.1 full", probability=0.02),
)


@dataclass
class ChaosResult:
    messages: int = 0  # answered 202
    kills: int = 0
    terms: int = 0
    lost: int = 0  # answered 202, never arrived
    duplicates: int = 0  # extra copies that arrived
    not_final: int = 0  # records still queued or sending at the end
    failed: int = 0  # records failed (retries used up): the test's faults should not cause any
    # Seconds from each restart's first /health answer until every message its
    # predecessor held in `sending` was claimed again (or final).
    recoveries: list[float] = field(default_factory=list)
    # Seconds from each signal until the new process answered /health (a SIGTERM's
    # grace period and the interpreter's start-up included).
    restarts: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        worst = max(self.recoveries, default=0.0)
        median = sorted(self.recoveries)[len(self.recoveries) // 2] if self.recoveries else 0.0
        restart = sorted(self.restarts)[len(self.restarts) // 2] if self.restarts else 0.0
        return [
            f"messages {self.messages}, SIGKILLs {self.kills}, SIGTERMs {self.terms}, "
            f"{self.seconds:.0f} s",
            f"lost {self.lost}, duplicates {self.duplicates}, not final {self.not_final}, "
            f"failed {self.failed}",
            f"recovery after a restart: median {median:.2f} s, worst {worst:.2f} s "
            "(until the dead process's claims were all claimed again)",
            f"signal to the new process's first /health answer: median {restart:.2f} s, "
            f"worst {max(self.restarts, default=0.0):.2f} s",
        ]


class Poster:
    """Client threads posting /send_async, each message under its own Idempotency-Key,
    sent again (same key) on a transport error or a 503 until answered 202."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.accepted: dict[str, str] = {}  # key -> Message-ID
        self.lock = threading.Lock()
        self.local = threading.local()
        self.clients: list[httpx.Client] = []

    def post(self, n: int) -> None:
        client: httpx.Client | None = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = httpx.Client(
                base_url=self.url, headers={"X-API-Key": API_KEY}, timeout=30
            )
            with self.lock:
                self.clients.append(client)
        key = uuid.uuid4().hex
        body = {"to": f"rcpt{n}@example.com", "subject": f"chaos {n}", "body": "hello"}
        while True:
            try:
                answer = client.post("/send_async", json=body, headers={"Idempotency-Key": key})
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if answer.status_code == 202:
                with self.lock:
                    self.accepted[key] = answer.json()["message_id"]
                return
            if answer.status_code != 503:
                raise AssertionError(f"/send_async answered {answer.status_code}: {answer.text}")
            time.sleep(0.05)


def in_flight(database: str) -> dict[str, int]:
    """The rows left in `sending` (the dead process's claims): id -> attempts so far."""
    engine = sa.create_engine(database, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT id, attempts FROM messages WHERE status = 'sending'")
            return {id_: int(attempts) for id_, attempts in conn.execute(query)}
    finally:
        engine.dispose()


def wait_taken_up(database: str, left: dict[str, int], timeout: float) -> float:
    """Seconds until every message the dead process held has been claimed again (its
    attempt count rose) or is final: what crash recovery controls. When it then
    arrives depends on the relay's random faults and the backlog ahead of a retry."""
    started = time.monotonic()
    if not left:
        return 0.0
    engine = sa.create_engine(database, poolclass=sa.NullPool)
    query = sa.text("SELECT id, attempts, status FROM messages WHERE id IN :ids").bindparams(
        sa.bindparam("ids", expanding=True)
    )
    try:
        while True:
            with engine.connect() as conn:
                rows = conn.execute(query, {"ids": sorted(left)}).all()
            waiting = [
                id_
                for id_, attempts, status in rows
                if status not in ("sent", "failed") and attempts <= left[id_]
            ]
            if not waiting:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"not taken up again: {rows_of_ids(database, waiting)}")
            time.sleep(0.05)
    finally:
        engine.dispose()


def arrived(smtp: FakeSMTPServer) -> collections.Counter[str | None]:
    return collections.Counter(m.message_id for m in smtp.messages())


def wait_arrived(
    smtp: FakeSMTPServer, message_ids: set[str], timeout: float, database: str
) -> float:
    started = time.monotonic()
    missing = still_missing(smtp, message_ids, lambda m: [m.message_id or ""], timeout)
    if missing:
        raise AssertionError(f"{len(missing)} never arrived: {rows_of(database, missing)}")
    return time.monotonic() - started


def rows_of(database: str, message_ids: set[str]) -> list[tuple[object, ...]]:
    """What the database says of some messages, by Message-ID (for a failure's message)."""
    return _rows(database, "message_id", sorted(message_ids))


def rows_of_ids(database: str, ids: list[str]) -> list[tuple[object, ...]]:
    return _rows(database, "id", ids)


def _rows(database: str, column: str, values: list[str]) -> list[tuple[object, ...]]:
    m = messages_table.c
    query = sa.select(
        m.id, m.status, m.attempts, m.owner, m.last_error, m.next_attempt_at, m.lease_until
    ).where(m[column].in_(values))
    engine = sa.create_engine(database, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]
    finally:
        engine.dispose()


def run_chaos(
    database: str,
    logs: Path,
    *,
    messages: int,
    kills: int,
    terms: int,
    concurrency: int = 4,
    client_threads: int = 8,
    seed: int = 0,
) -> ChaosResult:
    rng = random.Random(seed)
    result = ChaosResult(kills=kills, terms=terms)
    started = time.monotonic()
    port = free_port()
    with FakeSMTPServer(faults=FAULTS, seed=seed, max_messages=messages * 2 + 1000) as smtp:
        env = {
            "DATABASE_URL": database,
            "SMTP_HOST": smtp.host,
            "SMTP_PORT": str(smtp.port),
            "WORKER_CONCURRENCY": str(concurrency),
            "SMTP_MAX_RETRIES": "100",
            "SMTP_BACKOFF_BASE": "0.05",
            "SMTP_BACKOFF_MAX": "0.5",
            "POLL_INTERVAL": "0.1",
            "SHUTDOWN_GRACE_SECONDS": "2",
            "QUEUE_MAXSIZE": str(messages + 1000),
            "LOG_LEVEL": "WARNING",
        }
        runs = 0

        def start() -> ServiceProcess:
            nonlocal runs
            service = ServiceProcess(env, logs / f"service-{runs}.log", port)
            runs += 1
            service.start(timeout=60)
            return service

        # The moments to strike: after a random share of the messages is accepted.
        events = ["kill"] * kills + ["term"] * terms
        rng.shuffle(events)
        moments = sorted(rng.sample(range(messages // 20, messages), len(events)))
        poster = Poster(port)
        service = start()
        with ThreadPoolExecutor(client_threads) as pool:
            posting = pool.map(poster.post, range(messages))
            try:
                for event, moment in zip(events, moments, strict=True):
                    while len(poster.accepted) < moment:
                        time.sleep(0.01)
                    struck = time.monotonic()
                    if event == "kill":
                        service.kill()
                    else:
                        service.terminate(timeout=30)
                    left = in_flight(database)
                    service = start()
                    result.restarts.append(time.monotonic() - struck)
                    result.recoveries.append(wait_taken_up(database, left, 60))
                list(posting)  # every message answered 202 (or an AssertionError)
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
        for client in poster.clients:
            client.close()
        try:
            expected = set(poster.accepted.values())
            with contextlib.suppress(AssertionError):
                # The backlog may be deep: posting outpaces delivery on two cores.
                wait_arrived(smtp, expected, 300 + messages / 100, database)
            deadline = time.monotonic() + 60
            while True:
                counts = statuses(database)
                if counts["queued"] + counts["sending"] == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            service.stop()
        copies = arrived(smtp)
    result.messages = len(poster.accepted)
    result.lost = len(expected - set(copies))
    result.duplicates = sum(count - 1 for mid, count in copies.items() if mid in expected)
    result.not_final = counts["queued"] + counts["sending"]
    result.failed = counts["failed"]
    result.seconds = time.monotonic() - started
    return result


@contextlib.contextmanager
def database_of(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'outbox.db'}"
        return
    from tests.db.helpers import throwaway_database
    from tests.postgres_server import PostgresUnavailable, shared

    # A throwaway server of this process's own, stopped at exit (or TEST_POSTGRES_URL's).
    try:
        shared()
    except PostgresUnavailable as exc:
        raise SystemExit(f"chaos: {exc}") from exc
    with throwaway_database() as url:
        yield url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--terms", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the services' logs (and SQLite file) here")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            work = str(args.keep)
        else:
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-"))
        database = stack.enter_context(database_of(args.database, Path(work)))
        result = run_chaos(
            database,
            Path(work),
            messages=args.messages,
            kills=args.kills,
            terms=args.terms,
            concurrency=args.concurrency,
            seed=args.seed,
        )
    print(f"soak on {args.database} (WORKER_CONCURRENCY={args.concurrency}, seed {args.seed}):")
    for line in result.lines():
        print(f"  {line}")
    bound = args.kills * args.concurrency
    ok = result.lost == 0 and result.not_final == 0 and result.duplicates <= bound
    verdict = "OK" if ok else "FAILED"
    print(f"  {verdict}: lost 0, not final 0, duplicates <= {bound} (kills x connections)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

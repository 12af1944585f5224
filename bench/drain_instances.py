"""Drain rate of 1, 2 and 3 instances sharing one PostgreSQL outbox.

    python bench/drain_instances.py --messages 20000 --rounds 1

1. A backlog of --messages queued async rows (the rows Outbox.insert writes) is
   written in one transaction into a fresh PostgreSQL database whose schema comes
   from the migrations; that database then serves as a template.
2. For each instance count n, each round: a copy of the template
   (CREATE DATABASE ... TEMPLATE), Postfix's smtp-sink in its own process,
   and n `python -m service` processes started on the copy at
   once, WORKER_CONCURRENCY each. The rate is timed at the sink from the first
   message to the --messages'th, so start-up does not count. Afterwards the sink
   must have received exactly --messages (none twice) and every row be `sent`.

Needs the PostgreSQL server on 127.0.0.1:5432 (trust auth, user postgres).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median, parser
from bench.postfix import drain_sink
from bench.procs import Service, load_average, wait_until
from service.config import Settings
from service.db import Outbox, make_engine, messages_table
from service.mailer import RenderedMessage

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


def admin() -> sa.Engine:
    return sa.create_engine(f"{SERVER}/test", isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)


def rendered(n: int) -> RenderedMessage:
    message_id = f"<{uuid.uuid4().hex}@bench.example>"
    email = EmailMessage()
    email["From"] = "bench@example.com"
    email["To"] = f"rcpt{n}@example.com"
    email["Subject"] = f"drain {n}"
    email["Message-ID"] = message_id
    email.set_content("A short body of a typical transactional message.\n" * 8)
    return RenderedMessage(
        message_id=message_id,
        mail_from="bench@example.com",
        rcpt_tos=[f"rcpt{n}@example.com"],
        data=email.as_bytes().replace(b"\n", b"\r\n"),
    )


def build_template(name: str, count: int) -> None:
    with admin().connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = f"{SERVER}/{name}"
    engine = make_engine(Settings(api_key=["bench"], database_url=url))  # type: ignore[list-item]
    try:
        outbox = Outbox(engine)
        outbox.create_schema()
        started = time.perf_counter()
        # One transaction for the lot: the accept path (a commit per message) is
        # bench/accept.py's subject, not this one's.
        now = time.time()
        rows = []
        for n in range(count):
            message = rendered(n)
            rows.append(
                {
                    "id": uuid.uuid4().hex,
                    "mode": "async",
                    "status": "queued",
                    "mail_from": message.mail_from,
                    "rcpt_tos": json.dumps(message.rcpt_tos),
                    "to_addrs": json.dumps(message.rcpt_tos),
                    "subject": f"drain {n}",
                    "message_id": message.message_id,
                    "smtputf8": False,
                    "raw": message.data,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                    "next_attempt_at": now,
                }
            )
        with outbox.engine.begin() as conn:
            conn.execute(messages_table.insert(), rows)
        print(f"backlog: {count} rows inserted in {time.perf_counter() - started:.1f}s", flush=True)
    finally:
        engine.dispose()


def status_counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            query = sa.select(messages_table.c.status, sa.func.count()).group_by(
                messages_table.c.status
            )
            return {status: count for status, count in conn.execute(query)}
    finally:
        engine.dispose()


def drain(logs: Path, template: str, count: int, instances: int, threads: int) -> float:
    name = f"bench_drain_{uuid.uuid4().hex[:8]}"
    with admin().connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {template}")
    url = f"{SERVER}/{name}"
    sink = drain_sink(logs, count, name=f"sink-{instances}")
    services = [
        Service(
            logs,
            Path(os.devnull),
            {
                "DATABASE_URL": url,
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(sink.port),
                "QUEUE_MAXSIZE": str(count * 2),
                "WORKER_CONCURRENCY": str(threads),
            },
            name=f"service-{instances}-{i}",
        )
        for i in range(instances)
    ]
    try:
        for service in services:
            service.start(wait=False)
        first, last = sink.wait_done(600)
        if not wait_until(lambda: status_counts(url).get("sent") == count, 60, 0.5):
            raise RuntimeError(f"not all recorded sent: {status_counts(url)}")
        for service in services:
            service.terminate(30)
        total = sink.total()
        if total != count:
            raise RuntimeError(f"the sink received {total}, not {count} (duplicates?)")
        return count / (last - first)
    finally:
        for service in services:
            service.stop()
        sink.stop()
        with admin().connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(rounds=1)
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--threads", type=int, default=4, help="WORKER_CONCURRENCY per instance")
    p.add_argument("--instances", type=int, nargs="+", default=[1, 2, 3])
    args = p.parse_args(argv)
    template = f"bench_template_{uuid.uuid4().hex[:8]}"
    results: dict[int, list[float]] = {}
    load_before = load_average()
    try:
        build_template(template, args.messages)
        with tempfile.TemporaryDirectory(prefix="bench-drain-instances-") as logs:
            for round_no in range(args.rounds):
                for instances in args.instances:
                    rate = drain(Path(logs), template, args.messages, instances, args.threads)
                    results.setdefault(instances, []).append(rate)
                    print(
                        f"round {round_no}: {instances} instance(s) x {args.threads} threads: "
                        f"{rate:.0f} msgs/s, load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
    finally:
        with admin().connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {template} WITH (FORCE)")
    summary = {str(n): {"median": median(r), "rounds": r} for n, r in results.items()}
    print(f"{os.cpu_count()} CPUs; load before {load_before}, after {load_average()}")
    for n, r in results.items():
        print(f"  {n} instance(s): median {median(r):.0f} msgs/s")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Listing: GET /messages?limit=50 on a table of 1,000,000 messages against the same
on 10,000, same run (target: the same order of magnitude, ratio < 10).

    python bench/listing.py --small 10000 --large 1000000 --requests 300

Each table is filled straight into a SQLite file migrated by the service
(`Outbox.create_schema`): one key's messages with time-ordered ids, a tenth of them
tagged, most sent and some failed, plus another key's rows in between. Then
`python -m service` serves it (the relay blocked: nothing to deliver) and one
client asks, one request at a time, for: the first page, a page deep in the table
(through a cursor taken at 90 % of the ids), the first page of a tag, and of a
status. The figure per query is the median latency over --requests requests; the
ratio is large over small.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import sqlite3
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Result, finish, parser, workdir
from bench.procs import BLOCKED_RELAY_ARGS, FakeSMTP, Service
from service import db
from service.api import cursors
from service.config import Settings, key_fingerprint

TARGET = 10.0
QUERIES = {
    "first page": {},
    "deep page": {"cursor": None},  # filled in with a cursor at 90 %
    "tag": {"tag": "invoice"},
    "status": {"status": "failed"},
}


def fill(path: Path, count: int, key_name: str) -> list[str]:
    """`count` rows of `key_name` (and a tenth as many of another key) in `path`; the
    ids, oldest first."""
    engine = db.make_engine(Settings(api_key=["k"], database_url=f"sqlite:///{path}"))  # type: ignore[list-item]
    db.Outbox(engine).create_schema()
    engine.dispose()
    rng = random.Random(7)
    start_ms = int(time.time() * 1000) - count  # one message a millisecond, up to now
    ids: list[str] = []
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    insert = (
        "INSERT INTO messages (id, mode, status, mail_from, rcpt_tos, to_addrs, subject, "
        "message_id, smtputf8, attempts, created_at, updated_at, sent_at, key_name, tags) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    tag_insert = "INSERT INTO message_tags (message_id, key_name, tag) VALUES (?, ?, ?)"
    rows, tags = [], []
    for n in range(count + count // 10):
        mine = n % 11 != 10
        message_id = f"{start_ms + n:012x}7{rng.getrandbits(76):019x}"
        owner = key_name if mine else "someone-else"
        status = "failed" if n % 97 == 0 else "sent"
        tagged = n % 10 == 0
        when = (start_ms + n) / 1000
        to = json.dumps([f"user{n}@example.com"])
        rows.append(
            (message_id, "async", status, "app@example.com", to, to, f"message {n}",
             f"<{message_id}@example.com>", False, 1, when, when, when, owner,
             '["invoice"]' if tagged else None)
        )  # fmt: skip
        if tagged:
            tags.append((message_id, owner, "invoice"))
        if mine:
            ids.append(message_id)
        if len(rows) >= 50_000:
            conn.executemany(insert, rows)
            conn.executemany(tag_insert, tags)
            conn.commit()
            rows, tags = [], []
    conn.executemany(insert, rows)
    conn.executemany(tag_insert, tags)
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()
    return ids


def cursor_at(ids: list[str], fraction: float) -> str:
    """The cursor of a page that starts at `fraction` of the table (from the newest),
    made as the service makes one, without paging through everything before it."""
    last = sorted(ids, reverse=True)[int(len(ids) * fraction)]
    return cursors.encode_cursor(last, cursors.filters_digest(None, None, None, None))


def measure(service: Service, params: dict[str, str], requests: int) -> float:
    """Median seconds of GET /messages with `params` (one request at a time)."""
    times = []
    with httpx.Client(base_url=service.url, headers={"X-API-Key": service.api_key}) as client:
        for n in range(requests + 20):
            started = time.perf_counter()
            response = client.get("/messages", params={"limit": "50", **params})
            elapsed = time.perf_counter() - started
            if response.status_code != 200 or len(response.json()["messages"]) != 50:
                raise SystemExit(f"{params}: {response.status_code} {response.text[:300]}")
            if n >= 20:  # the first ones warm the page cache
                times.append(elapsed)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--large", type=int, default=1_000_000)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--keep", type=Path, help="keep logs here")
    args = p.parse_args(argv)
    result = Result.begin(
        "listing", f"GET /messages?limit=50 median ms, {args.large:,} vs {args.small:,} rows",
        f"< {TARGET} (large / small)",
    )  # fmt: skip
    key = secrets.token_urlsafe(24)
    figures: dict[int, dict[str, float]] = {}
    with (
        workdir("bench-listing-", args.keep) as (tmp, logs),
        FakeSMTP(logs, BLOCKED_RELAY_ARGS) as fake,
    ):
        tables = {}
        for size in (args.small, args.large):
            started = time.perf_counter()
            tables[size] = fill(Path(tmp) / f"list-{size}.db", size, key_fingerprint(key))
            print(f"filled {size:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
        for round_no in range(args.rounds):
            for size in (args.small, args.large) if round_no % 2 == 0 else (args.large, args.small):
                env = fake.relay_env()
                with Service(logs, Path(tmp) / f"list-{size}.db", env, api_key=key) as service:
                    for name, params in QUERIES.items():
                        if "cursor" in params:
                            params = {"cursor": cursor_at(tables[size], 0.9)}
                        seconds = measure(service, params, args.requests)
                        best = figures.setdefault(size, {})
                        best[name] = min(best.get(name, seconds), seconds)
                        print(f"round {round_no}, {size:>9,} rows, {name:>10}: "
                              f"{seconds * 1000:.2f} ms", flush=True)  # fmt: skip
    ratios = []
    for name in QUERIES:
        small, large = figures[args.small][name], figures[args.large][name]
        ratios.append(large / small)
        result.rounds.append(
            {"small_ms": small * 1000, "large_ms": large * 1000, "ratio": large / small}
        )
        result.notes.append(
            f"{name}: {small * 1000:.2f} ms at {args.small:,}, {large * 1000:.2f} ms at "
            f"{args.large:,}: {large / small:.2f}x"
        )
    result.value = figures[args.large]["first page"] * 1000
    result.baseline = figures[args.small]["first page"] * 1000
    result.ratio = max(ratios)
    result.ok = result.ratio < TARGET
    result.notes.append(f"best of {args.rounds} rounds per query; {os.cpu_count()} CPUs")
    return finish(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())

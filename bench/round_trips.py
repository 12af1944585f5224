"""Round trips per message on one delivery connection, over a delayed link.

    python bench/round_trips.py --messages 200 --delay 0.010

One `python -m service` with WORKER_CONCURRENCY=1 (one connection, defaults
otherwise) drains a backlog through bench/delay_proxy.py (--delay each way) into:

- Postfix's smtp-sink, which offers PIPELINING but not CHUNKING;
- fakesmtp (its own process, --blackhole), which offers both.

The figure is the time between the first and the last message recorded `sent`,
per message; the baseline is one round trip measured through the same proxy to
the same relay in the same run (smtplib's NOOP, --noops of them, median), so the
ratio is the number of round trips a message takes, plus what both ends do
locally per message (the service's database and Python, the relay's own work)
as a fraction of one. The count is the nearest whole number, since a round trip
more would add a whole one (21 ms at the default delay) and the local work is a
millisecond or less; the report gives that remainder in ms too. Targets: at most
2 round trips with PIPELINING, 1 with CHUNKING too.
"""

from __future__ import annotations

import smtplib
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Result, finish, median, parser, workdir
from bench.delay_proxy import DelayProxy
from bench.drain import build_backlog, copy_db, status_counts
from bench.postfix import SMTP_SINK, SmtpSink, missing
from bench.procs import FakeSMTP, Service, wait_until


def sent_span(db_path: Path) -> tuple[int, float]:
    """(messages sent, seconds from the first sent_at to the last)."""
    with sqlite3.connect(db_path) as con:
        count, first, last = con.execute(
            "SELECT count(*), min(sent_at), max(sent_at) FROM messages WHERE status = 'sent'"
        ).fetchone()
    return count, last - first


def noop_round_trip(port: int, count: int) -> float:
    """The median time of one NOOP and its reply through the proxy at `port`."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        times = []
        for _ in range(count):
            started = time.perf_counter()
            client.noop()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def drain_once(
    logs: Path, snapshot: Path, work: Path, host: str, port: int, count: int, label: str
) -> float:
    """Seconds per message over one connection to host:port."""
    db_path = work / f"rt-{label}.db"
    copy_db(snapshot, db_path)
    env = {
        "SMTP_HOST": host,
        "SMTP_PORT": str(port),
        "QUEUE_MAXSIZE": str(count * 2),
        "WORKER_CONCURRENCY": "1",
    }
    service = Service(logs, db_path, env, name=f"service-{label}")
    try:
        service.start(wait=False)
        limit = 60 + count * 0.5
        if not wait_until(lambda: status_counts(db_path).get("sent") == count, limit, 0.2):
            raise RuntimeError(f"{label}: not all sent: {status_counts(db_path)}")
        if service.terminate(30) != 0:
            raise RuntimeError(f"{label}: service did not exit 0:\n{service.log_tail()}")
        sent, span = sent_span(db_path)
        return span / (sent - 1)
    finally:
        service.stop()
        for suffix in ("", "-wal", "-shm"):
            db_path.with_name(db_path.name + suffix).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(rounds=3)
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--delay", type=float, default=0.010, help="one-way delay, seconds")
    p.add_argument("--noops", type=int, default=50, help="round trips timed for the baseline")
    args = p.parse_args(argv)
    if problem := missing(SMTP_SINK):
        print(problem)
        return 2
    results = []
    with workdir("bench-round-trips-", None) as (work, logs):
        snapshot = work / "backlog.db"
        build_backlog(logs, snapshot, args.messages)
        relays = {
            "pipelining (smtp-sink)": (SmtpSink(logs), 2.0),
            "pipelining + chunking (fakesmtp)": (
                FakeSMTP(logs, ["--blackhole"]),
                1.0,
            ),
        }
        for name, (relay, target) in relays.items():
            relay.start()
            try:
                with DelayProxy(0, relay.host, relay.port, args.delay, log_dir=logs) as proxy:
                    rounds = []
                    for n in range(args.rounds):
                        rtt = noop_round_trip(proxy.port, args.noops)
                        per_message = drain_once(
                            logs, snapshot, work, "127.0.0.1", proxy.port, args.messages, f"{n}"
                        )
                        rounds.append({"seconds_per_message": per_message, "round_trip_s": rtt})
            finally:
                relay.stop()
            trips = [r["seconds_per_message"] / r["round_trip_s"] for r in rounds]
            result = Result.begin(
                f"round-trips {name}",
                f"ms a message vs ms a NOOP, one connection, {2000 * args.delay:g} ms RTT set",
                f"<= {target:g} round trips",
            )
            result.value = 1000 * median([r["seconds_per_message"] for r in rounds])
            result.baseline = 1000 * median([r["round_trip_s"] for r in rounds])
            result.ratio = median(trips)
            counted = round(result.ratio)
            result.ok = counted <= target
            result.rounds = rounds
            result.notes.append("round trips per round: " + ", ".join(f"{t:.2f}" for t in trips))
            local_ms = result.value - counted * result.baseline
            result.notes.append(
                f"{counted} round trip(s) a message, and {local_ms:.1f} ms of local work "
                "at both ends"
            )
            print(f"{name}: {result.ratio:.2f} round trips a message", flush=True)
            results.append(result)
    codes = [finish(result, args.json) for result in results]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())

"""Drain rate: a queued backlog delivered by the service vs plain smtplib (target >= 0.7, 1,000/s).

    python bench/drain.py --messages 20000 --rounds 2

1. Accept --messages through /send_async while the relay is down (fakesmtp with a
   `connect:delay:3600` fault: the delivery threads hang in the greeting), then
   SIGTERM the service: everything stays queued in its SQLite database, which is
   kept as a snapshot. (The few messages the hung threads had claimed stay in
   `sending` under a 1 s lease, LEASE_SECONDS=1 for this phase only, so the next
   start takes them back at once, as it would after a crash.)
2. Each round, on a fresh copy of the snapshot and a fresh sink:
   - baseline: plain smtplib in one process, WORKER_CONCURRENCY threads, each with
     one persistent connection, sending the same messages (the stored bytes,
     envelope and all, read from the snapshot before timing);
   - service: `python -m service` started on the snapshot, the relay up.
   Both are timed at the sink (Postfix's smtp-sink, C, in its own process: a
   Python sink would be as slow as what it measures) from the first message
   received to the last, so
   neither side's start-up counts; the service's time from spawn to the last
   message is reported as well. The sink must receive exactly --messages in all.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import sqlite3
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Result, finish, median, parser, post_many, request_cycle, workdir
from bench.postfix import drain_sink
from bench.procs import BLOCKED_RELAY_ARGS, FakeSMTP, Service, wait_until
from bench.profile import record, summarize

TARGET_RATIO = 0.7
TARGET_RATE = 1000.0


def status_counts(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as con:
        return dict(con.execute("SELECT status, count(*) FROM messages GROUP BY status").fetchall())


def copy_db(source: Path, target: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        src = source.with_name(source.name + suffix)
        if src.exists():
            shutil.copyfile(src, target.with_name(target.name + suffix))


def build_backlog(logs: Path, db_path: Path, count: int, python: str = sys.executable) -> None:
    """`python`: the interpreter whose build makes the snapshot (bench/revisions.py
    passes the older build's, whose schema the newer one migrates on start)."""
    with FakeSMTP(logs, BLOCKED_RELAY_ARGS) as fake:
        service = Service(
            logs,
            db_path,
            {
                **fake.relay_env(),
                "QUEUE_MAXSIZE": str(count * 2),
                "LEASE_SECONDS": "1",
                "SHUTDOWN_GRACE_SECONDS": "0",
            },
            name="service-accept",
            python=python,
        )
        with service:
            requests = request_cycle("127.0.0.1", service.port, "/send_async", service.api_key)
            started = time.perf_counter()
            statuses = post_many("127.0.0.1", service.port, requests, count)
            elapsed = time.perf_counter() - started
            if statuses != {202: count}:
                raise RuntimeError(f"accept phase answered {dict(statuses)}")
            print(f"backlog: {count} accepted in {elapsed:.1f}s with the relay down", flush=True)
            code = service.terminate(timeout=30)
            if code != 0:
                raise RuntimeError(f"service exited {code} on SIGTERM")
    time.sleep(1.2)  # the hung threads' 1 s leases run out
    counts = status_counts(db_path)
    if sum(counts.values()) != count or counts.get("sent"):
        raise RuntimeError(f"backlog not as expected: {counts}")
    print(f"backlog left queued: {counts}", flush=True)


# -- the baseline, in its own process so that it does not share our GIL ------------


def baseline_client(db_path: Path, port: int, threads: int) -> None:
    with sqlite3.connect(db_path) as con:
        rows = con.execute("SELECT mail_from, rcpt_tos, raw FROM messages ORDER BY created_at")
        messages = [(sender, json.loads(rcpts), raw) for sender, rcpts, raw in rows]
    chunks = [messages[n::threads] for n in range(threads)]
    errors: list[BaseException] = []

    def send(chunk: list[tuple[str, list[str], bytes]]) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.ehlo()
                for sender, rcpts, raw in chunk:
                    client.sendmail(sender, rcpts, raw)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=send, args=(chunk,)) for chunk in chunks]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]


def run_baseline(logs: Path, snapshot: Path, count: int, threads: int, round_no: int) -> float:
    sink = drain_sink(logs, count, name=f"sink-baseline-{round_no}")
    try:
        client = Service(logs, snapshot, {}, name=f"baseline-{round_no}")  # just a logged process
        client._spawn(
            [
                sys.executable,
                str(Path(__file__)),
                "--baseline-client",
                str(snapshot),
                "--port",
                str(sink.port),
                "--threads",
                str(threads),
            ],
            dict(os.environ),
        )
        first, last = sink.wait_done(300)
        assert client.proc is not None
        if client.proc.wait(60) != 0:
            raise RuntimeError(f"baseline client failed:\n{client.log_tail()}")
        total = sink.total()
        if total != count:
            raise RuntimeError(f"baseline: the sink received {total}, not {count}")
        return count / (last - first)
    finally:
        sink.stop()


def run_service(
    logs: Path,
    snapshot: Path,
    work: Path,
    count: int,
    round_no: int,
    profile: Path | None,
    python: str = sys.executable,
) -> tuple[float, float]:
    db_path = work / f"drain-{round_no}.db"
    copy_db(snapshot, db_path)
    sink = drain_sink(logs, count, name=f"sink-service-{round_no}")
    service = Service(
        logs,
        db_path,
        {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(sink.port), "QUEUE_MAXSIZE": str(count * 2)},
        name=f"service-drain-{round_no}",
        python=python,
    )
    try:
        spawned = time.time()
        service.start(wait=False)
        spy = None
        if profile:
            # From /health on: the delivery threads are running by then, start-up is over.
            service.wait_healthy(60)
            spy = record(service.pid, 8, profile)
        first, last = sink.wait_done(300)
        if not wait_until(lambda: status_counts(db_path).get("sent") == count, 60, 0.5):
            raise RuntimeError(f"service: not all recorded sent: {status_counts(db_path)}")
        if service.terminate(30) != 0:
            raise RuntimeError(f"service did not exit 0:\n{service.log_tail()}")
        total = sink.total()
        if total != count:
            raise RuntimeError(f"service: the sink received {total}, not {count}")
        if spy is not None and profile is not None:
            spy.wait(60)
            print(summarize(profile, 40), flush=True)
        return count / (last - first), last - spawned
    finally:
        service.stop()
        sink.stop()
        for suffix in ("", "-wal", "-shm"):
            db_path.with_name(db_path.name + suffix).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--threads", type=int, default=4, help="WORKER_CONCURRENCY (the default: 4)")
    p.add_argument("--profile", type=Path, help="py-spy the service's drain into this file")
    p.add_argument("--keep", type=Path, help="keep logs here")
    p.add_argument("--baseline-client", type=Path, help=argparse_hidden())
    p.add_argument("--port", type=int, help=argparse_hidden())
    args = p.parse_args(argv)
    if args.baseline_client is not None:
        baseline_client(args.baseline_client, args.port, args.threads)
        return 0
    result = Result.begin(
        "drain",
        f"msgs/s delivering a {args.messages} backlog",
        f">= {TARGET_RATIO} and >= {TARGET_RATE:.0f} msgs/s",
    )
    service_rates: list[float] = []
    baseline_rates: list[float] = []
    with workdir("bench-drain-", args.keep) as (work, logs):
        snapshot = work / "backlog.db"
        build_backlog(logs, snapshot, args.messages)
        for round_no in range(args.rounds):
            baseline_rates.append(
                run_baseline(logs, snapshot, args.messages, args.threads, round_no)
            )
            rate, spawn_to_done = run_service(
                logs, snapshot, work, args.messages, round_no, args.profile
            )
            service_rates.append(rate)
            result.rounds.append(
                {
                    "service_msgs_per_s": rate,
                    "baseline_msgs_per_s": baseline_rates[-1],
                    "service_spawn_to_done_s": spawn_to_done,
                    "load1": os.getloadavg()[0],
                }
            )
            print(
                f"round {round_no}: service {rate:.0f} msgs/s (spawn to last message "
                f"{spawn_to_done:.1f}s), smtplib x{args.threads} {baseline_rates[-1]:.0f} msgs/s, "
                f"load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    result.value, result.baseline = max(service_rates), max(baseline_rates)
    result.ratio = result.value / result.baseline
    result.ok = result.ratio >= TARGET_RATIO and result.value >= TARGET_RATE
    result.notes.append(
        f"median service {median(service_rates):.0f} msgs/s, smtplib "
        f"{median(baseline_rates):.0f} msgs/s; sink: Postfix's smtp-sink; "
        f"{args.threads} connections each side"
    )
    return finish(result, args.json)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())

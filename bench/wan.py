"""SMTP delivery over a WAN: the service vs plain smtplib vs Postfix, into Postfix's smtp-sink.

    python bench/wan.py --messages 2000 --delay 0.010 --rounds 3

The sink is Postfix's smtp-sink (C, PIPELINING, keeps nothing), so no baseline is
bounded by a Python sink; between the senders and it, bench/delay_proxy.py adds
--delay each way (10 ms: a 20 ms round trip). One sink and one proxy for the whole
run; every measurement is a window of the sink's message count, timed from the
window's first message to its last (no side's start-up counts) and checked to hold
exactly --messages.

1. A backlog of --messages accepted by the service with the relay down and kept as
   a SQLite snapshot (bench/drain.py's build_backlog).
2. Each round, in this order, through the proxy:
   (b) naive: one process, --naive-threads threads (4), each one persistent
       `smtplib.SMTP` connection, `sendmail()` of the snapshot's stored bytes and
       envelopes (bench/drain.py's baseline client);
   (a) service: `python -m service` on a fresh copy of the snapshot, defaults except
       SMTP_HOST/SMTP_PORT (the proxy) and QUEUE_MAXSIZE (WORKER_CONCURRENCY too
       if --connections is given); it must also have recorded every message `sent`;
   (c) postfix: a private Postfix 3.7 (bench/postfix.py: own config and queue
       directories, relayhost the proxy, default_destination_concurrency_limit =
       the service's connection cap, Postfix's defaults otherwise: PIPELINING,
       connection cache)
       given the same messages through its smtpd (not timed; `defer_transports`
       keeps them queued), then `postqueue -f`: its queue drained, as the service
       drains its outbox. Postfix adds its Received header to each message.
3. Loopback (no proxy, delay 0), --loopback-rounds rounds: the service's drain into
   smtp-sink vs plain smtplib over as many persistent connections as the
   service's cap.

The service's cap is --connections, or its WORKER_CONCURRENCY default when that is
not given. Each round also prints the round trips a message took per connection,
cap / (msgs/s x RTT): an upper bound, since fewer connections than the cap may have
been open for part of the run.

Ratios are of the medians over the rounds; every round's figures are printed and
kept in the JSON (a list of the three results).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Result, finish, median, parser, workdir
from bench.delay_proxy import DelayProxy
from bench.drain import baseline_client, build_backlog, copy_db, status_counts
from bench.postfix import POSTFIX, POSTQUEUE, SMTP_SINK, PostfixInstance, SmtpSink, missing
from bench.procs import LoggedProcess, Service, wait_until

Message = tuple[str, list[str], bytes]


def stored_messages(db_path: Path) -> list[Message]:
    with sqlite3.connect(db_path) as con:
        rows = con.execute("SELECT mail_from, rcpt_tos, raw FROM messages ORDER BY created_at")
        return [(sender, json.loads(rcpts), raw) for sender, rcpts, raw in rows]


def time_limit(count: int, delay: float, connections: int) -> float:
    """Generous: ten round trips a message, spread over the connections, plus a minute."""
    return 60 + count * 10 * max(2 * delay, 0.001) / connections


def run_naive(
    logs: Path,
    sink: SmtpSink,
    snapshot: Path,
    port: int,
    count: int,
    connections: int,
    limit: float,
    label: str,
) -> float:
    client = LoggedProcess(f"naive-{label}", logs)
    client._spawn(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--naive-client",
            str(snapshot),
            "--port",
            str(port),
            "--connections",
            str(connections),
        ],
        dict(os.environ),
    )
    try:
        mark = sink.mark()
        first, last = sink.wait_for(mark, count, limit)
        assert client.proc is not None
        if client.proc.wait(60) != 0:
            raise RuntimeError(f"naive client failed:\n{client.log_tail()}")
        sink.settle(mark, count)
        return count / (last - first)
    finally:
        client.stop()


def run_service(
    logs: Path,
    sink: SmtpSink,
    snapshot: Path,
    work: Path,
    port: int,
    count: int,
    connections: int | None,
    limit: float,
    label: str,
) -> tuple[float, float]:
    """(msgs/s first to last message at the sink, seconds from spawn to the last).
    `connections` None: the service's own WORKER_CONCURRENCY default."""
    db_path = work / f"wan-{label}.db"
    copy_db(snapshot, db_path)
    env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port), "QUEUE_MAXSIZE": str(count * 2)}
    if connections is not None:
        env["WORKER_CONCURRENCY"] = str(connections)
    service = Service(logs, db_path, env, name=f"service-{label}")
    try:
        mark = sink.mark()
        spawned = time.time()
        service.start(wait=False)
        first, last = sink.wait_for(mark, count, limit)
        if not wait_until(lambda: status_counts(db_path).get("sent") == count, 60, 0.5):
            raise RuntimeError(f"service: not all recorded sent: {status_counts(db_path)}")
        if service.terminate(30) != 0:
            raise RuntimeError(f"service did not exit 0:\n{service.log_tail()}")
        sink.settle(mark, count)
        return count / (last - first), last - spawned
    finally:
        service.stop()
        for suffix in ("", "-wal", "-shm"):
            db_path.with_name(db_path.name + suffix).unlink(missing_ok=True)


def run_postfix(
    postfix: PostfixInstance, sink: SmtpSink, messages: list[Message], limit: float
) -> tuple[float, float]:
    """(msgs/s first to last message at the sink, seconds the injection took)."""
    started = time.perf_counter()
    postfix.inject(messages)
    injected = time.perf_counter() - started
    mark = sink.mark()
    postfix.flush()
    first, last = sink.wait_for(mark, len(messages), limit)
    postfix.wait_empty(60)
    sink.settle(mark, len(messages))
    return len(messages) / (last - first), injected


def default_concurrency() -> int:
    from service.config import Settings

    default = Settings.model_fields["worker_concurrency"].default
    assert isinstance(default, int)
    return default


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else 0.0


def per_round(rounds: list[dict[str, float]], key: str) -> str:
    return ", ".join(f"{r[key]:.0f}" for r in rounds)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(rounds=3)
    p.add_argument("--messages", type=int, default=5000, help="backlog size (each side)")
    p.add_argument("--delay", type=float, default=0.010, help="one-way delay, seconds")
    p.add_argument(
        "--connections",
        type=int,
        help="the service's WORKER_CONCURRENCY and Postfix's destination concurrency limit "
        "(default: the service's default, the service then runs with its defaults)",
    )
    p.add_argument("--naive-threads", type=int, default=4, help="the naive smtplib worker")
    p.add_argument("--loopback-rounds", type=int, help="default: --rounds; 0 skips loopback")
    # (--rounds 0 --loopback-rounds 3: the loopback figure alone)
    p.add_argument("--no-postfix", action="store_true", help="skip (c), Postfix as the sender")
    p.add_argument("--target-naive", type=float, default=8.0, help="service/naive at least")
    p.add_argument("--target-postfix", type=float, default=1.0, help="service/postfix at least")
    p.add_argument("--target-loopback", type=float, default=0.7, help="loopback at least")
    p.add_argument("--keep", type=Path, help="keep logs here")
    p.add_argument("--naive-client", type=Path, help=argparse_hidden())
    p.add_argument("--port", type=int, help=argparse_hidden())
    args = p.parse_args(argv)
    if args.naive_client is not None:
        baseline_client(args.naive_client, args.port, args.connections)
        return 0
    problem = missing(SMTP_SINK)
    if problem:
        print(problem)
        return 2
    use_postfix = not args.no_postfix
    if use_postfix and (problem := missing(POSTFIX, POSTQUEUE)):
        print(problem)
        return 2
    loopback_rounds = args.rounds if args.loopback_rounds is None else args.loopback_rounds
    cap = args.connections if args.connections is not None else default_concurrency()
    count, conns, naive_threads, rtt_ms = args.messages, cap, args.naive_threads, 2000 * args.delay
    limit = time_limit(count, args.delay, naive_threads)
    wan_naive = Result.begin(
        "wan-naive",
        f"msgs/s, {count}-message backlog, {rtt_ms:.0f} ms RTT, service (cap {conns}) vs "
        f"smtplib x{naive_threads}",
        f">= {args.target_naive}",
    )
    wan_postfix = Result.begin(
        "wan-postfix",
        f"msgs/s, {count}-message backlog, {rtt_ms:.0f} ms RTT, {conns} connections, "
        "service vs Postfix",
        f">= {args.target_postfix}",
    )
    loopback = Result.begin(
        "loopback",
        f"msgs/s, {count}-message backlog, no proxy, {conns} connections, service vs smtplib",
        f">= {args.target_loopback}",
    )
    with workdir("bench-wan-", args.keep) as (work, logs):
        snapshot = work / "backlog.db"
        build_backlog(logs, snapshot, count)
        messages = stored_messages(snapshot)
        size = sum(len(raw) for _, _, raw in messages) / len(messages)
        print(f"messages: {len(messages)}, {size:.0f} bytes each on average", flush=True)
        with (
            SmtpSink(logs) as sink,
            DelayProxy(0, sink.host, sink.port, args.delay, log_dir=logs) as proxy,
        ):
            postfix = (
                PostfixInstance(
                    work / "postfix",
                    "127.0.0.1",
                    proxy.port,
                    concurrency=conns,
                    log_copy=logs / "postfix-maillog.log" if args.keep else None,
                )
                if use_postfix
                else None
            )
            try:
                if postfix is not None:
                    postfix.start()
                for n in range(args.rounds):
                    row: dict[str, float] = {}
                    row["naive_msgs_per_s"] = run_naive(
                        logs, sink, snapshot, proxy.port, count, naive_threads, limit, f"wan-{n}"
                    )
                    row["service_msgs_per_s"], row["service_spawn_to_done_s"] = run_service(
                        logs,
                        sink,
                        snapshot,
                        work,
                        proxy.port,
                        count,
                        args.connections,
                        limit,
                        f"wan-{n}",
                    )
                    row["service_round_trips_per_msg"] = conns / (
                        row["service_msgs_per_s"] * 2 * args.delay
                    )
                    line = (
                        f"round {n} ({rtt_ms:.0f} ms RTT): service "
                        f"{row['service_msgs_per_s']:.1f} msgs/s (<= "
                        f"{row['service_round_trips_per_msg']:.2f} round trips a message "
                        f"per connection), smtplib x{naive_threads} "
                        f"{row['naive_msgs_per_s']:.1f}"
                    )
                    if postfix is not None:
                        row["postfix_msgs_per_s"], row["postfix_inject_s"] = run_postfix(
                            postfix, sink, messages, limit
                        )
                        line += f", postfix {row['postfix_msgs_per_s']:.1f}"
                    row["load1"] = os.getloadavg()[0]
                    print(f"{line}; load {row['load1']:.2f}", flush=True)
                    wan_naive.rounds.append(row)
            finally:
                if postfix is not None:
                    postfix.stop()
        proxy_stats = proxy.stats  # known once it has stopped
        with SmtpSink(logs, name="smtp-sink-loopback") as sink:
            for n in range(loopback_rounds):
                row = {}
                row["naive_msgs_per_s"] = run_naive(
                    logs, sink, snapshot, sink.port, count, conns, limit, f"loop-{n}"
                )
                row["service_msgs_per_s"], row["service_spawn_to_done_s"] = run_service(
                    logs,
                    sink,
                    snapshot,
                    work,
                    sink.port,
                    count,
                    args.connections,
                    limit,
                    f"loop-{n}",
                )
                row["load1"] = os.getloadavg()[0]
                print(
                    f"round {n} (loopback): service {row['service_msgs_per_s']:.0f} msgs/s, "
                    f"smtplib x{conns} {row['naive_msgs_per_s']:.0f}; load {row['load1']:.2f}",
                    flush=True,
                )
                loopback.rounds.append(row)

    service = median([r["service_msgs_per_s"] for r in wan_naive.rounds])
    naive = median([r["naive_msgs_per_s"] for r in wan_naive.rounds])
    sink_note = (
        f"sink: smtp-sink (Postfix {postfix_version()}), via bench/delay_proxy.py at "
        f"{args.delay * 1000:g} ms each way"
    )
    if proxy_stats is not None:
        sink_note += (
            f" ({proxy_stats.connections} connections, {proxy_stats.up} bytes up, "
            f"{proxy_stats.down} down)"
        )
    wan_naive.value, wan_naive.baseline = service, naive
    wan_naive.ratio = ratio(service, naive)
    wan_naive.ok = wan_naive.ratio >= args.target_naive
    wan_naive.notes += [
        f"medians of {args.rounds} rounds; per round: service "
        f"{per_round(wan_naive.rounds, 'service_msgs_per_s')}, smtplib "
        f"{per_round(wan_naive.rounds, 'naive_msgs_per_s')}",
        sink_note,
    ]
    results = [wan_naive] if wan_naive.rounds else []
    if use_postfix and wan_naive.rounds:
        wan_postfix.rounds = wan_naive.rounds
        pf = median([r["postfix_msgs_per_s"] for r in wan_naive.rounds])
        wan_postfix.value, wan_postfix.baseline = service, pf
        wan_postfix.ratio = ratio(service, pf)
        wan_postfix.ok = wan_postfix.ratio >= args.target_postfix
        wan_postfix.notes += [
            f"medians of {args.rounds} rounds; per round: service "
            f"{per_round(wan_naive.rounds, 'service_msgs_per_s')}, postfix "
            f"{per_round(wan_naive.rounds, 'postfix_msgs_per_s')} (queue drained by "
            f"postqueue -f; destination concurrency limit {conns})",
        ]
        results.append(wan_postfix)
    if loopback.rounds:
        loop_service = median([r["service_msgs_per_s"] for r in loopback.rounds])
        loop_naive = median([r["naive_msgs_per_s"] for r in loopback.rounds])
        loopback.value, loopback.baseline = loop_service, loop_naive
        loopback.ratio = ratio(loop_service, loop_naive)
        loopback.ok = loopback.ratio >= args.target_loopback
        loopback.notes += [
            f"medians of {len(loopback.rounds)} rounds; per round: service "
            f"{per_round(loopback.rounds, 'service_msgs_per_s')}, smtplib "
            f"{per_round(loopback.rounds, 'naive_msgs_per_s')}; sink: smtp-sink, no proxy",
        ]
        results.append(loopback)
    codes = [finish(result, None) for result in results]
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(result) for result in results], indent=2))
    return max(codes, default=0)


def postfix_version() -> str:
    import subprocess

    done = subprocess.run(
        ["/usr/sbin/postconf", "-d", "-h", "mail_version"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "?"


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())

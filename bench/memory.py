"""Memory: peak RSS of the service with 100,000 messages queued vs just started (target <= 250 MB).

    python bench/memory.py --messages 100000 --rounds 2

The relay is blocked (fakesmtp with a `connect:delay:3600` fault), so everything
accepted stays queued; QUEUE_MAXSIZE=200000 so nothing is shed. Peak RSS is
VmHWM from /proc/<pid>/status, summed over the service process and its children
(uvicorn runs one process here, so it is that one).

1. Start the service; its RSS once /health answers is the baseline (idle).
2. Accept --messages through /send_async; then read the peak.
3. --rounds times: SIGTERM it and start it again on the same database, the relay
   still down, so that it loads the whole backlog at start (the in-memory queue
   holds ids, not messages); read the peak once it counts the backlog.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Result, finish, parser, post_many, request_cycle, workdir
from bench.procs import BLOCKED_RELAY_ARGS, FakeSMTP, Service, tree_memory_kib, wait_until

TARGET_MB = 250.0


def mb(kib: int) -> float:
    return kib / 1024


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--keep", type=Path, help="keep logs here")
    args = p.parse_args(argv)
    result = Result.begin(
        "memory", f"peak RSS with {args.messages} queued vs idle, MB", f"peak <= {TARGET_MB:.0f} MB"
    )
    peaks: list[float] = []
    with workdir("bench-memory-", args.keep) as (tmp, logs):
        db_path = Path(tmp) / "memory.db"
        with FakeSMTP(logs, BLOCKED_RELAY_ARGS) as fake:
            env = {
                **fake.relay_env(),
                "QUEUE_MAXSIZE": str(max(200_000, args.messages * 2)),
                "SHUTDOWN_GRACE_SECONDS": "0",
            }
            service = Service(logs, db_path, env, name="service-accept")
            with service:
                time.sleep(1.0)  # let start-up settle before calling it idle
                idle_rss = mb(tree_memory_kib(service.pid, "VmRSS"))
                idle_hwm = mb(tree_memory_kib(service.pid, "VmHWM"))
                requests = request_cycle("127.0.0.1", service.port, "/send_async", service.api_key)
                started = time.perf_counter()
                statuses = post_many("127.0.0.1", service.port, requests, args.messages)
                elapsed = time.perf_counter() - started
                if statuses != {202: args.messages}:
                    raise RuntimeError(f"accept answered {dict(statuses)}")
                accept_peak = mb(tree_memory_kib(service.pid, "VmHWM"))
                accept_rss = mb(tree_memory_kib(service.pid, "VmRSS"))
                peaks.append(accept_peak)
                result.rounds.append(
                    {
                        "phase_accept": 1.0,
                        "idle_rss_mb": idle_rss,
                        "idle_peak_mb": idle_hwm,
                        "peak_mb": accept_peak,
                        "rss_mb": accept_rss,
                        "accept_s": elapsed,
                    }
                )
                print(
                    f"idle: RSS {idle_rss:.1f} MB (peak {idle_hwm:.1f}); after accepting "
                    f"{args.messages} in {elapsed:.0f}s: RSS {accept_rss:.1f} MB, peak "
                    f"{accept_peak:.1f} MB",
                    flush=True,
                )
                service.terminate(30)
            for round_no in range(args.rounds):
                again = Service(logs, db_path, env, name=f"service-restart-{round_no}")
                with again:
                    loaded = wait_until(
                        lambda s=again: s.metric("mail_backlog") >= args.messages, 60, 0.5
                    )
                    time.sleep(1.0)  # a scheduler pass or two over the full backlog
                    peak = mb(tree_memory_kib(again.pid, "VmHWM"))
                    rss = mb(tree_memory_kib(again.pid, "VmRSS"))
                    depth = again.metric("mail_queue_depth")
                    again.terminate(30)
                peaks.append(peak)
                result.rounds.append(
                    {"phase_restart": 1.0, "peak_mb": peak, "rss_mb": rss, "queue_depth": depth}
                )
                print(
                    f"restart {round_no} with the backlog queued (loaded: {loaded}, ids in the "
                    f"in-memory queue {depth:.0f}): RSS {rss:.1f} MB, peak {peak:.1f} MB",
                    flush=True,
                )
        db_mb = sum(f.stat().st_size for f in Path(tmp).glob("memory.db*") if f.is_file()) / 2**20
    result.value = max(peaks)
    result.baseline = idle_rss
    result.ratio = result.value / result.baseline
    result.ok = result.value <= TARGET_MB
    result.target = f"peak <= {TARGET_MB:.0f} MB (ratio is peak / idle RSS, for information)"
    result.notes.append(f"database on disk: {db_mb:.0f} MB for {args.messages} messages")
    return finish(result, args.json)


if __name__ == "__main__":
    sys.exit(main())

"""Accept rate: /send_async requests/s of the service vs a bare FastAPI app (target >= 0.6).

    python bench/accept.py --seconds 10 --connections 32 --rounds 2

The service runs as `python -m service` (SQLite in a temporary directory, its
defaults otherwise) with the relay blocked, so that delivery costs nothing while
we measure: fakesmtp with a `connect:delay:3600` fault holds each delivery
thread's first connection in the greeting, and QUEUE_MAXSIZE is raised so that
nothing is shed. The baseline is bench/bare_app.py, served the same way, which
checks the key, validates the same body and answers 202 without storing it.
Both are driven by bench/httpload.py with the same connections and duration,
alternately, each round on a fresh process (and a fresh database).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Result, finish, median, parser, request_cycle, workdir
from bench.httpload import LoadResult, run_load
from bench.procs import BLOCKED_RELAY_ARGS, REPO, FakeSMTP, Service
from bench.profile import record, summarize

TARGET = 0.6


class BareApp(Service):
    """bench/bare_app.py in its own process; reuses Service's start/health/stop."""

    def start(self, timeout: float = 30.0, *, wait: bool = True) -> BareApp:
        self._spawn([sys.executable, str(REPO / "bench" / "bare_app.py")], self.env)
        if wait:
            self.wait_healthy(timeout)
        return self


def drive(port: int, api_key: str, connections: int, seconds: float) -> LoadResult:
    requests = request_cycle("127.0.0.1", port, "/send_async", api_key)
    return run_load(
        "127.0.0.1",
        port,
        lambda n: requests[n % len(requests)],
        connections=connections,
        seconds=seconds,
    )


def measure(
    server: Service, connections: int, seconds: float, warmup: float, profile: Path | None = None
) -> LoadResult:
    with server:
        drive(server.port, server.api_key, connections, warmup)
        spy = record(server.pid, seconds, profile) if profile else None
        result = drive(server.port, server.api_key, connections, seconds)
        if spy is not None and profile is not None:
            spy.wait(60)
            print(summarize(profile), flush=True)
        return result


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--profile", type=Path, help="py-spy the service into this raw file")
    p.add_argument("--keep", type=Path, help="keep logs here (default: a temporary directory)")
    args = p.parse_args(argv)
    result = Result.begin("accept", "/send_async requests/s", f">= {TARGET}")
    service_rates: list[float] = []
    bare_rates: list[float] = []
    with (
        workdir("bench-accept-", args.keep) as (tmp, logs),
        FakeSMTP(logs, BLOCKED_RELAY_ARGS) as fake,
    ):
        for round_no in range(args.rounds):
            key = secrets.token_urlsafe(24)
            bare = BareApp(logs, Path(tmp) / "unused.db", {}, api_key=key, name=f"bare-{round_no}")
            b = measure(bare, args.connections, args.seconds, args.warmup)
            service = Service(
                logs,
                Path(tmp) / f"accept-{round_no}.db",
                {
                    **fake.relay_env(),
                    "QUEUE_MAXSIZE": "10000000",
                },
                api_key=key,
                name=f"service-{round_no}",
            )
            s = measure(service, args.connections, args.seconds, args.warmup, args.profile)
            for label, run in (("bare", b), ("service", s)):
                others = {k: v for k, v in run.statuses.items() if k != 202}
                if others:
                    result.notes.append(f"round {round_no} {label}: non-202 answers {others}")
            bare_rates.append(b.statuses[202] / b.seconds)
            service_rates.append(s.statuses[202] / s.seconds)
            result.rounds.append(
                {
                    "service_rps": service_rates[-1],
                    "bare_rps": bare_rates[-1],
                    "service_p50_ms": s.percentile(50) * 1000,
                    "service_p99_ms": s.percentile(99) * 1000,
                    "bare_p50_ms": b.percentile(50) * 1000,
                    "bare_p99_ms": b.percentile(99) * 1000,
                    "load1": os.getloadavg()[0],
                }
            )
            print(
                f"round {round_no}: service {service_rates[-1]:.0f} req/s "
                f"(p50 {s.percentile(50) * 1000:.1f} ms, p99 {s.percentile(99) * 1000:.1f} ms)"
                f", bare {bare_rates[-1]:.0f} req/s (p50 {b.percentile(50) * 1000:.1f} ms, "
                f"p99 {b.percentile(99) * 1000:.1f} ms), load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    # Best round of each, as timeit does: on a shared machine the slow rounds measure
    # the neighbours. The medians are in the notes.
    result.value, result.baseline = max(service_rates), max(bare_rates)
    result.ratio = result.value / result.baseline
    result.ok = result.ratio >= TARGET and not result.notes
    result.notes.append(
        f"median service {median(service_rates):.0f} req/s, bare {median(bare_rates):.0f} "
        f"req/s, ratio {median(service_rates) / median(bare_rates):.2f}; "
        f"{args.connections} connections, {args.seconds:.0f} s per side per round"
    )
    return finish(result, args.json)


if __name__ == "__main__":
    sys.exit(main())

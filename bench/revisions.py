"""Two builds of the service side by side: the accept and drain benchmarks of each.

    python bench/revisions.py --before /path/to/old-venv/bin/python \\
        --after /path/to/new-venv/bin/python --rounds 5

Each interpreter runs its own checkout's `python -m service` (install each
checkout into its own virtualenv with `pip install -e`). Both builds get the same
load in every round, in alternating order (ABBA), so that a slow minute of a
shared machine falls on both: accept is bench/accept.py's measurement (the relay
blocked, /send_async for --seconds over --connections), drain is bench/drain.py's
(one backlog snapshot, delivered into bench/sink.py). The baseline is the
`--before` build; the ratios are after / before, over the medians and the best
rounds. Besides the rates, accept reports the CPU time the service process spent
per request, which a busy neighbour disturbs less than the wall clock.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accept import drive
from bench.common import Result, finish, median, parser, workdir
from bench.drain import build_backlog, run_service
from bench.procs import FakeSMTP, Service, load_average

SIDES = ("before", "after")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def accept_round(
    python: str, logs: Path, db: Path, fake: FakeSMTP, connections: int, seconds: float
) -> tuple[float, float]:
    """(202 answers a second, CPU microseconds per request) of one build."""
    env = {
        "SMTP_HOST": fake.host,
        "SMTP_PORT": str(fake.port),
        "SMTP_TIMEOUT": "3600",
        "QUEUE_MAXSIZE": "10000000",
    }
    key = secrets.token_urlsafe(24)
    service = Service(logs, db, env, api_key=key, name=db.stem, python=python)
    with service:
        drive(service.port, service.api_key, connections, 2.0)  # warm-up
        cpu = cpu_seconds(service.pid)
        run = drive(service.port, service.api_key, connections, seconds)
        cpu = cpu_seconds(service.pid) - cpu
    if set(run.statuses) != {202}:
        raise RuntimeError(f"{python}: /send_async answered {dict(run.statuses)}")
    return run.statuses[202] / run.seconds, cpu / run.requests * 1e6


def order(round_no: int) -> tuple[str, ...]:
    return SIDES if round_no % 2 == 0 else SIDES[::-1]


def report(
    name: str, metric: str, rates: dict[str, list[float]], load_before: str, extra: str = ""
) -> Result:
    result = Result.begin(name, metric, "after/before >= 1.0 (noise: a few %)")
    result.load_before = load_before
    result.value, result.baseline = median(rates["after"]), median(rates["before"])
    result.ratio = result.value / result.baseline
    result.ok = result.ratio >= 1.0
    best = max(rates["after"]) / max(rates["before"])
    result.notes.append(f"medians compared; best rounds: ratio {best:.2f}{extra}")
    for n, (b, a) in enumerate(zip(rates["before"], rates["after"], strict=True)):
        result.rounds.append({"before": b, "after": a})
        result.notes.append(f"round {n}: before {b:.0f}, after {a:.0f}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="the interpreter of the old build")
    p.add_argument("--after", required=True, help="the interpreter of the new build")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--keep", type=Path, help="keep logs here")
    args = p.parse_args(argv)
    python = {"before": args.before, "after": args.after}
    load_before = load_average()
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu: dict[str, list[float]] = {side: [] for side in SIDES}
    drains: dict[str, list[float]] = {side: [] for side in SIDES}
    blocked = ["--fault", "connect:delay:3600", "--http-port", "0"]
    with workdir("bench-revisions-", args.keep) as (work, logs):
        # `python -m` puts the working directory first on sys.path: run where no
        # checkout is, so that each interpreter imports its own.
        os.chdir(work)
        with FakeSMTP(logs, blocked) as fake:
            for round_no in range(args.rounds):
                for side in order(round_no):
                    db = work / f"accept-{side}-{round_no}.db"
                    rate, us = accept_round(
                        python[side], logs, db, fake, args.connections, args.seconds
                    )
                    rates[side].append(rate)
                    cpu[side].append(us)
                    print(f"accept round {round_no} {side}: {rate:.0f} req/s, {us:.0f} us CPU/req")
        snapshot = work / "backlog.db"
        build_backlog(logs, snapshot, args.messages)
        for round_no in range(args.rounds):
            for side in order(round_no):
                rate, _ = run_service(
                    logs, snapshot, work, args.messages, round_no, None, python[side]
                )
                drains[side].append(rate)
                print(f"drain round {round_no} {side}: {rate:.0f} msgs/s", flush=True)
    cpu_note = (
        f"; CPU per request (median) before {median(cpu['before']):.0f} us, "
        f"after {median(cpu['after']):.0f} us"
    )
    accept = report("accept", "/send_async req/s, median", rates, load_before, cpu_note)
    code = finish(accept, None)
    drain = report("drain", f"msgs/s delivering {args.messages}, median", drains, load_before)
    return max(code, finish(drain, args.json))


if __name__ == "__main__":
    sys.exit(main())

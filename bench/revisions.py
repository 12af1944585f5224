"""Two builds of the service side by side: the accept and drain benchmarks of each.

    python bench/revisions.py --before /path/to/old-venv/bin/python \\
        --after /path/to/new-venv/bin/python --rounds 8

Each interpreter runs its own checkout's `python -m service` (install each
checkout into its own virtualenv with `pip install -e`); it runs them from a scratch
directory of its own, since `python -m` puts the working directory on sys.path.
Accept is bench/accept.py's measurement (the relay blocked, /send_async for
--seconds over --connections), drain is bench/drain.py's (one backlog snapshot,
delivered into Postfix's smtp-sink). The baseline is the `--before` build; ratios are
after / before (above 1.0: the new build is faster).

--simultaneous (the default): in every round both builds run at the same time,
both services on CPU 1 and what loads them (accept: one bench/accept.py `drive`
process per side; drain: one sink per side) on CPU 0, the starting order
alternating per round. A busy neighbour then slows both alike, so each round's
ratio holds although the rates themselves swing by half from round to round on
a shared 2-vCPU machine: the figure is the median of the per-round ratios, their
spread in the notes. Accept: 2 s of warm-up, then --seconds, both at once; the
CPU time each service spent per request is reported too (it does not depend on
how the two split the core). Drain: each build gets its own copy of the
snapshot and its own sink; its rate counts only the messages it recorded sent
(`sent_at`) while both were delivering, because the build that finishes first
leaves the core to the other, which would pull the ratio towards 1.0. The rate
of the whole drain (sink-timed, first message to last) is in the notes.

--sequential: the builds one after the other, in ABBA order, each alone; the
ratios are over the medians and the best rounds. Closer to a deployment (one
service has both CPUs) but at the mercy of the neighbours from one minute to the
next.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import multiprocessing
import os
import secrets
import sqlite3
import statistics
import sys
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accept import drive
from bench.common import Result, finish, median, parser, workdir
from bench.drain import build_backlog, copy_db, run_service, status_counts
from bench.httpload import LoadResult
from bench.postfix import CountingSink, drain_sink
from bench.procs import BLOCKED_RELAY_ARGS, FakeSMTP, Service, load_average, stopping, wait_until

SIDES = ("before", "after")
SERVICE_CPUS = {1}  # both builds' services (--simultaneous)
LOAD_CPUS = {0}  # the load generators and sinks, and this script


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, all its threads (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def order(round_no: int) -> tuple[str, ...]:
    return SIDES if round_no % 2 == 0 else SIDES[::-1]


def accept_env(fake: FakeSMTP) -> dict[str, str]:
    # Blocked relay: every delivery thread waits in the greeting, nothing is sent.
    return {
        "SMTP_HOST": fake.host,
        "SMTP_PORT": str(fake.port),
        "SMTP_TIMEOUT": "3600",
        "QUEUE_MAXSIZE": "10000000",
    }


def checked_rate(python: str, run: LoadResult) -> float:
    if set(run.statuses) != {202}:
        raise RuntimeError(f"{python}: /send_async answered {dict(run.statuses)}")
    return run.statuses[202] / run.seconds


# -- sequential: one build at a time (ABBA) ----------------------------------------


def accept_round(
    python: str, logs: Path, db: Path, fake: FakeSMTP, connections: int, seconds: float
) -> tuple[float, float]:
    """(202 answers a second, CPU microseconds per request) of one build."""
    key = secrets.token_urlsafe(24)
    service = Service(logs, db, accept_env(fake), api_key=key, name=db.stem, python=python)
    with service:
        drive(service.port, service.api_key, connections, 2.0)  # warm-up
        cpu = cpu_seconds(service.pid)
        run = drive(service.port, service.api_key, connections, seconds)
        cpu = cpu_seconds(service.pid) - cpu
    return checked_rate(python, run), cpu / run.requests * 1e6


# -- simultaneous: both builds at once, services on one core, load on the other ----


@contextlib.contextmanager
def spawning_on(cpus: set[int]) -> Iterator[None]:
    """Processes started inside run on `cpus`, every thread they ever make included.

    The affinity mask passes through fork and exec and on to each new thread, so
    pinning this (single-threaded) script while it spawns leaves no thread of the
    child unpinned, not even the ones made before it answers /health."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def load_process(
    port: int, key: str, connections: int, seconds: float, start: Barrier, out: Queue[LoadResult]
) -> None:
    os.sched_setaffinity(0, LOAD_CPUS)
    start.wait()  # both sides' load begins at the same moment
    out.put(drive(port, key, connections, seconds))


def drive_together(
    services: dict[str, Service], sides: tuple[str, ...], connections: int, seconds: float
) -> dict[str, LoadResult]:
    """bench/accept.py's `drive` against every service at once, each in its own process
    (one GIL each, as with one build alone)."""
    start = multiprocessing.Barrier(len(sides))
    queues: dict[str, Queue[LoadResult]] = {side: multiprocessing.Queue() for side in sides}
    workers = {}
    for side in sides:
        service = services[side]
        load = (service.port, service.api_key, connections, seconds, start, queues[side])
        workers[side] = multiprocessing.Process(target=load_process, args=load)
    for side in sides:
        workers[side].start()
    try:
        # Read before joining: a worker exits only once its result left the queue.
        return {side: queues[side].get(timeout=seconds + 120) for side in sides}
    finally:
        for worker in workers.values():
            worker.join(10)
            if worker.is_alive():
                worker.kill()


def start_services(services: dict[str, Service], sides: tuple[str, ...]) -> None:
    with spawning_on(SERVICE_CPUS):
        for side in sides:
            services[side].start(wait=False)
    for side in sides:
        services[side].wait_healthy(60)


def accept_together(
    python: dict[str, str],
    logs: Path,
    work: Path,
    fake: FakeSMTP,
    round_no: int,
    connections: int,
    seconds: float,
) -> dict[str, tuple[float, float]]:
    """Per side: (202 answers a second, CPU microseconds per request), measured at once."""
    sides = order(round_no)
    services = {
        side: Service(
            logs,
            work / f"accept-{side}-{round_no}.db",
            accept_env(fake),
            name=f"accept-{side}-{round_no}",
            python=python[side],
        )
        for side in sides
    }
    with stopping(*services.values()):
        start_services(services, sides)
        drive_together(services, sides, connections, 2.0)  # warm-up
        cpu = {side: cpu_seconds(services[side].pid) for side in sides}
        runs = drive_together(services, sides, connections, seconds)
        cpu = {side: cpu_seconds(services[side].pid) - cpu[side] for side in sides}
    return {
        side: (checked_rate(python[side], runs[side]), cpu[side] / runs[side].requests * 1e6)
        for side in sides
    }


def sent_times(db_path: Path) -> list[float]:
    """When each message was recorded sent, in order."""
    with contextlib.closing(sqlite3.connect(db_path)) as con:
        rows = con.execute("SELECT sent_at FROM messages WHERE status = 'sent' ORDER BY sent_at")
        return [at for (at,) in rows]


def overlap_rates(times: dict[str, list[float]]) -> dict[str, float]:
    """Each side's msgs/s over the span in which both were delivering."""
    begin = max(t[0] for t in times.values())
    end = min(t[-1] for t in times.values())
    if end - begin < 1.0:
        raise RuntimeError(f"the two drains overlapped only {end - begin:.2f} s")
    return {
        side: (bisect.bisect_right(t, end) - bisect.bisect_left(t, begin)) / (end - begin)
        for side, t in times.items()
    }


def finish_drain(service: Service, sink: CountingSink, count: int) -> list[float]:
    """Check that all `count` were delivered and recorded once; their sent times."""
    if not wait_until(lambda: status_counts(service.db_path).get("sent") == count, 60, 0.5):
        raise RuntimeError(
            f"{service.name}: not all recorded sent: {status_counts(service.db_path)}"
        )
    if service.terminate(30) != 0:
        raise RuntimeError(f"{service.name} did not exit 0:\n{service.log_tail()}")
    total = sink.total()
    if total != count:
        raise RuntimeError(f"{service.name}: the sink received {total}, not {count}")
    return sent_times(service.db_path)


def drain_together(
    python: dict[str, str], logs: Path, work: Path, snapshot: Path, count: int, round_no: int
) -> dict[str, tuple[float, float]]:
    """Per side: (msgs/s while both delivered, msgs/s of its whole drain at the sink).

    bench/drain.py's run_service, for two builds at once: each its own copy of the
    snapshot and its own sink, the sinks on LOAD_CPUS and the services on
    SERVICE_CPUS."""
    sides = order(round_no)
    dbs = {side: work / f"drain-{side}-{round_no}.db" for side in sides}
    sinks: dict[str, CountingSink] = {}
    services: dict[str, Service] = {}
    try:
        with spawning_on(LOAD_CPUS):
            for side in sides:
                copy_db(snapshot, dbs[side])
                sinks[side] = drain_sink(logs, count, name=f"sink-{side}-{round_no}")
        for side in sides:
            env = {
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(sinks[side].port),
                "QUEUE_MAXSIZE": str(count * 2),
            }
            name = f"drain-{side}-{round_no}"
            services[side] = Service(logs, dbs[side], env, name=name, python=python[side])
        with spawning_on(SERVICE_CPUS):
            for side in sides:
                services[side].start(wait=False)
        # The sinks time stamp their lines, so reading one after the other loses nothing.
        spans = {side: sinks[side].wait_done(600) for side in sides}
        times = {side: finish_drain(services[side], sinks[side], count) for side in sides}
    finally:
        for process in [*services.values(), *sinks.values()]:
            process.stop()
        for db_path in dbs.values():
            for suffix in ("", "-wal", "-shm"):
                db_path.with_name(db_path.name + suffix).unlink(missing_ok=True)
    both = overlap_rates(times)
    return {side: (both[side], count / (spans[side][1] - spans[side][0])) for side in sides}


# -- the report ----------------------------------------------------------------------


def report(
    name: str,
    metric: str,
    rates: dict[str, list[float]],
    load_before: str,
    extra: list[str],
    paired: bool,
) -> Result:
    """`paired`: the rounds ran both builds at once, so the figure is the median of the
    per-round ratios; else (one after the other) the ratio of the medians."""
    noise = "about 1-3 %" if paired else "a few %, more when neighbours are busy"
    result = Result.begin(name, metric, f"after/before >= 1.0 (noise: {noise})")
    result.load_before = load_before
    result.value, result.baseline = median(rates["after"]), median(rates["before"])
    ratios = [a / b for b, a in zip(rates["before"], rates["after"], strict=True)]
    if paired:
        result.ratio = median(ratios)
        sd = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
        result.notes.append(
            f"median of the per-round ratios {result.ratio:.3f}; min {min(ratios):.3f}, "
            f"max {max(ratios):.3f}, "
            f"sd {sd:.3f} over {len(ratios)} rounds"
        )
    else:
        result.ratio = result.value / result.baseline
        best = max(rates["after"]) / max(rates["before"])
        result.notes.append(f"medians compared; best rounds: ratio {best:.2f}")
    result.ok = result.ratio >= 1.0
    result.notes += extra
    for n, (b, a) in enumerate(zip(rates["before"], rates["after"], strict=True)):
        result.rounds.append({"before": b, "after": a, "ratio": a / b})
        result.notes.append(f"round {n}: before {b:.0f}, after {a:.0f}, ratio {a / b:.3f}")
    return result


def paired_note(what: str, values: dict[str, list[float]], unit: str, inverse: bool) -> str:
    """The medians of a secondary figure and its median per-round ratio (after/before,
    or before/after when lower is better)."""
    pairs = zip(values["before"], values["after"], strict=True)
    ratios = [b / a if inverse else a / b for b, a in pairs]
    return (
        f"{what} (median) before {median(values['before']):.0f} {unit}, after "
        f"{median(values['after']):.0f} {unit}; median per-round ratio {median(ratios):.3f}"
    )


def check_cpus() -> None:
    needed = SERVICE_CPUS | LOAD_CPUS
    if not needed <= os.sched_getaffinity(0):
        raise SystemExit(f"--simultaneous needs CPUs {sorted(needed)}; use --sequential")


def off_the_services(simultaneous: bool) -> contextlib.AbstractContextManager[None]:
    """While both builds run: this script, and what it starts outside spawning_on
    (fakesmtp, which only holds connections), on LOAD_CPUS."""
    return spawning_on(LOAD_CPUS) if simultaneous else contextlib.nullcontext()


def pair_text(got: dict[str, float], unit: str) -> str:
    sides = ", ".join(f"{side} {got[side]:.0f} {unit}" for side in SIDES)
    return f"{sides}, ratio {got['after'] / got['before']:.3f}"


def round_line(kind: str, round_no: int, got: dict[str, float], unit: str) -> str:
    return f"{kind} round {round_no} ({order(round_no)[0]} first): {pair_text(got, unit)}"


def accept_phase(
    args: argparse.Namespace, python: dict[str, str], work: Path, logs: Path
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per side, per round: (req/s, CPU microseconds per request)."""
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu: dict[str, list[float]] = {side: [] for side in SIDES}
    with FakeSMTP(logs, BLOCKED_RELAY_ARGS) as fake:
        for round_no in range(args.rounds):
            if args.simultaneous:
                got = accept_together(
                    python, logs, work, fake, round_no, args.connections, args.seconds
                )
            else:
                got = {
                    side: accept_round(
                        python[side],
                        logs,
                        work / f"accept-{side}-{round_no}.db",
                        fake,
                        args.connections,
                        args.seconds,
                    )
                    for side in order(round_no)
                }
            for side in SIDES:
                rates[side].append(got[side][0])
                cpu[side].append(got[side][1])
            line = round_line("accept", round_no, {s: got[s][0] for s in SIDES}, "req/s")
            us = ", ".join(f"{side} {got[side][1]:.0f}" for side in SIDES)
            print(f"{line}; CPU us/req {us}", flush=True)
    return rates, cpu


def drain_phase(
    args: argparse.Namespace, python: dict[str, str], work: Path, snapshot: Path, logs: Path
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per side, per round: (the drain's msgs/s, the whole drain's at the sink)."""
    drains: dict[str, list[float]] = {side: [] for side in SIDES}
    whole: dict[str, list[float]] = {side: [] for side in SIDES}
    for round_no in range(args.rounds):
        if args.simultaneous:
            got = drain_together(python, logs, work, snapshot, args.messages, round_no)
        else:
            # Alone, the sink-timed drain is the whole drain: both figures are the same.
            got = {}
            for side in order(round_no):
                rate, _ = run_service(
                    logs, snapshot, work, args.messages, round_no, None, python[side]
                )
                got[side] = (rate, rate)
        for side in SIDES:
            drains[side].append(got[side][0])
            whole[side].append(got[side][1])
        line = round_line("drain", round_no, {s: got[s][0] for s in SIDES}, "msgs/s")
        if args.simultaneous:
            line += "; whole drains " + pair_text({s: got[s][1] for s in SIDES}, "msgs/s")
        print(line, flush=True)
    return drains, whole


def _interpreter(path: str) -> str:
    """A path made absolute; a bare name (`python3`) is left to PATH."""
    return os.path.abspath(path) if os.sep in path else path


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="the interpreter of the old build")
    p.add_argument("--after", required=True, help="the interpreter of the new build")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--keep", type=Path, help="keep logs here")
    p.add_argument("--only", choices=("accept", "drain"), help="run one of the two")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--simultaneous",
        dest="simultaneous",
        action="store_true",
        default=True,
        help="both builds at once, services on CPU 1, load on CPU 0 (the default)",
    )
    mode.add_argument(
        "--sequential",
        dest="simultaneous",
        action="store_false",
        help="one build at a time, ABBA order, each alone on the machine",
    )
    args = p.parse_args(argv)
    if args.simultaneous:
        check_cpus()
    # Absolute: the run moves to a scratch directory below, where a relative path to a
    # virtualenv (`--before 629d6cc/bin/python`) would name nothing.
    python = {side: _interpreter(getattr(args, side)) for side in SIDES}
    load_before = load_average()
    with workdir("bench-revisions-", args.keep) as (work, logs):
        # `python -m` puts the working directory first on sys.path: run where no
        # checkout is, so that each interpreter imports its own.
        os.chdir(work)
        if args.only != "drain":
            with off_the_services(args.simultaneous):
                rates, cpu = accept_phase(args, python, work, logs)
        if args.only != "accept":
            snapshot = work / "backlog.db"
            # Untimed, both CPUs; made by the older build, so that the newer one can
            # migrate it (an older build cannot read a newer schema).
            build_backlog(logs, snapshot, args.messages, python["before"])
            with off_the_services(args.simultaneous):
                drains, whole = drain_phase(args, python, work, snapshot, logs)
    code = 0
    if args.only != "drain":
        code = accept_report(args, rates, cpu, load_before)
    if args.only == "accept":
        return code
    drain_notes = []
    both = ""
    if args.simultaneous:
        drain_notes.append(
            paired_note(
                "whole drains at the sink (the slower alone at the end)", whole, "msgs/s", False
            )
        )
        both = "while both delivered, "
    metric = f"msgs/s delivering {args.messages} ({both}median)"
    drain = report("drain", metric, drains, load_before, drain_notes, args.simultaneous)
    return max(code, finish(drain, args.json))


def accept_report(
    args: argparse.Namespace,
    rates: dict[str, list[float]],
    cpu: dict[str, list[float]],
    load_before: str,
) -> int:
    both = "both at once, " if args.simultaneous else ""
    accept_notes = [paired_note("CPU per request", cpu, "us", inverse=True)]
    accept = report(
        "accept",
        f"/send_async req/s ({both}median)",
        rates,
        load_before,
        accept_notes,
        args.simultaneous,
    )
    return finish(accept, args.json if args.only == "accept" else None)


if __name__ == "__main__":
    sys.exit(main())

"""Instructions per message on the accept and drain paths of two builds, under callgrind.

    python bench/instructions.py --before /old-venv/bin/python --after /new-venv/bin/python

On a shared machine the wall clock of a run moves by tens of percent from one
minute to the next, and so does the CPU time (a neighbour takes the cache and
the core's frequency). valgrind's callgrind counts instructions instead, which
depend only on the code and its input. Each build runs the same driver twice
under callgrind, with --small and --large messages; the difference of the two
totals divided by the difference in messages is what one more message costs,
start-up and imports cancelled out. The baseline is the `--before` build; the
ratio is before / after (above 1: the new build does less work per message).

- accept: `POST /send_async` through the app in-process (Starlette's TestClient:
  routing, dependencies, validation, render, group commit, enqueue); the relay
  is a fakesmtp process that never greets, so the delivery thread does nothing.
- drain: the outbox holds the messages (stored in one batch, so that storing
  them costs little of the count); one MailQueueWorker thread claims, sends over
  one SMTPConnection into bench/sink.py (its own process, not counted) and
  records the outcomes.

The driver imports only the names both layouts export (`service.db`,
`service.mailer`, `service.app`), and runs in a scratch directory, so that each
interpreter imports its own checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
BODY = {"to": ["user@example.com"], "subject": "benchmark", "body": "Hello.\n" * 5}


# -- the driver, run under callgrind by the build's own interpreter ----------------


def _settings(work: Path, smtp_port: int) -> object:
    from service.config import Settings

    return Settings(
        api_key=["bench-key"],
        database_url=f"sqlite:///{work / 'mail.db'}",
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_timeout=3600,
        worker_concurrency=1,
        queue_maxsize=10_000_000,
        metrics_enabled=False,
        # Work that scales with the wall clock (which valgrind stretches) rather than
        # with the messages: the scheduler's polls and the grace period at the end.
        poll_interval=30.0,
        shutdown_grace_seconds=0.0,
    )


def drive_accept(work: Path, smtp_port: int, count: int) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(_settings(work, smtp_port))) as client:  # type: ignore[arg-type]
        for _ in range(count):
            response = client.post("/send_async", json=BODY, headers={"X-API-Key": "bench-key"})
            if response.status_code != 202:
                raise RuntimeError(response.text)


def drive_drain(work: Path, smtp_port: int, count: int) -> None:
    from service import db, mailer
    from service.models import SendRequest
    from service.queue_worker import MailQueueWorker

    settings = _settings(work, smtp_port)
    engine = db.make_engine(settings)  # type: ignore[arg-type]
    outbox = db.Outbox(engine)
    outbox.create_schema()
    request = SendRequest.model_validate(BODY)
    # One render and one INSERT batch: what is counted per message is the delivery.
    rendered = mailer.render_message(request, default_from="bench@example.com")
    messages = [
        db.NewMessage(id=f"{n:032x}", mode="async", rendered=rendered, to=request.to, subject="x")
        for n in range(count)
    ]
    if any(outbox.insert_many(messages)):
        raise RuntimeError("the backlog could not be stored")
    worker = MailQueueWorker(
        outbox,
        settings,  # type: ignore[arg-type]
        sender_factory=lambda: mailer.SMTPConnection(settings),  # type: ignore[arg-type]
    )
    worker.start()
    deadline = time.monotonic() + 3600
    while outbox.count_unfinished() and time.monotonic() < deadline:
        time.sleep(1.0)
    worker.stop(5)
    if outbox.count_unfinished():
        raise RuntimeError("the drain did not finish")


# -- the outer script ----------------------------------------------------------------


def callgrind(python: str, path: str, smtp_port: int, count: int, work: Path) -> int:
    """Instructions of one driver run of `path` with `count` messages."""
    out = work / f"callgrind-{path}-{count}.out"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        python,
        str(HERE),
        "--drive",
        path,
        "--count",
        str(count),
        "--smtp-port",
        str(smtp_port),
    ]
    scratch = Path(tempfile.mkdtemp(dir=work))
    run = subprocess.run(command, cwd=scratch, capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", run.stderr) or re.search(
        r"I\s+refs:\s+([\d,]+)", run.stderr
    )
    if run.returncode != 0 or found is None:
        raise RuntimeError(f"{python} {path} {count}: exit {run.returncode}\n{run.stderr[-3000:]}")
    return int(found.group(1).replace(",", ""))


def per_message(python: str, path: str, port: int, small: int, large: int, work: Path) -> float:
    low = callgrind(python, path, port, small, work)
    high = callgrind(python, path, port, large, work)
    return (high - low) / (large - small)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", help="the interpreter of the old build")
    p.add_argument("--after", help="the interpreter of the new build")
    p.add_argument("--small", type=int, default=100)
    p.add_argument("--large", type=int, default=600)
    p.add_argument("--only", nargs="+", choices=["accept", "drain"], default=["accept", "drain"])
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--drive", choices=["accept", "drain"], help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--smtp-port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.drive is not None:
        driver = drive_accept if args.drive == "accept" else drive_drain
        driver(Path.cwd(), args.smtp_port, args.count)
        return 0
    if not (args.before and args.after):
        p.error("--before and --after are required")
    sys.path.insert(0, str(HERE.parents[1]))
    from bench.procs import FakeSMTP, Sink

    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        work = Path(tmp)
        for path in args.only:
            figures[path] = {}
            for side, python in (("before", args.before), ("after", args.after)):
                # Absolute: each driver runs in a scratch directory, where a relative
                # path to a virtualenv (`--before OLD/bin/python`) would name nothing.
                python = os.path.abspath(python) if os.sep in python else python
                if path == "accept":
                    with FakeSMTP(work, ["--fault", "connect:delay:3600"]) as relay:
                        cost = per_message(python, path, relay.port, args.small, args.large, work)
                else:
                    sink = Sink(work, args.small + args.large, name=f"sink-{side}").start()
                    try:
                        cost = per_message(python, path, sink.port, args.small, args.large, work)
                    finally:
                        sink.stop()
                figures[path][side] = cost
                print(f"{path} {side}: {cost:,.0f} instructions per message", flush=True)
            ratio = figures[path]["before"] / figures[path]["after"]
            figures[path]["ratio"] = ratio
            print(f"{path}: before/after {ratio:.3f}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same hashing in every run
    sys.exit(main())

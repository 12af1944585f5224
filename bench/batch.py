"""Batch accept: messages/s through POST /send_batch (500 a request) against the same
messages as separate POST /send_async requests, same service, same run (target >= 5).

    python bench/batch.py --batches 20 --rounds 3

The service runs as `python -m service` (SQLite in a temporary directory) with the
relay blocked, as in bench/accept.py, so that delivery costs nothing while we
measure. Each round starts a fresh service and, alternately, posts `--batches`
batches of 500 over 4 keep-alive connections and the same number of messages as
single /send_async requests over 32 connections (bench/httpload.py's client): the
baseline is the API's own way of sending many, at full speed.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    BODY_LINE,
    Result,
    finish,
    median,
    parser,
    post_many,
    request_cycle,
    workdir,
)
from bench.httpload import build_post
from bench.procs import BLOCKED_RELAY_ARGS, FakeSMTP, Service

TARGET = 5.0
BATCH = 500


def batch_requests(port: int, api_key: str, variants: int = 7) -> list[bytes]:
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    requests = []
    for v in range(variants):
        messages = [
            {
                "to": [f"user{v}-{n}@example.com"],
                "subject": f"benchmark message {n}",
                "body": BODY_LINE * 5,
            }
            for n in range(BATCH)
        ]
        body = json.dumps({"messages": messages}).encode()
        requests.append(build_post(f"127.0.0.1:{port}", "/send_batch", body, headers))
    return requests


def timed(port: int, requests: list[bytes], count: int, connections: int) -> tuple[float, int]:
    """Seconds to answer `count` requests, and how many answered 202."""
    started = time.perf_counter()
    statuses = post_many("127.0.0.1", port, requests, count, connections)
    elapsed = time.perf_counter() - started
    others = {code: n for code, n in statuses.items() if code != 202}
    if others:
        raise SystemExit(f"non-202 answers: {others}")
    return elapsed, statuses[202]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=20, help="batches of 500 a round")
    p.add_argument("--keep", type=Path, help="keep logs here")
    args = p.parse_args(argv)
    result = Result.begin("batch", "messages/s accepted", f">= {TARGET}")
    messages = args.batches * BATCH
    batch_rates: list[float] = []
    single_rates: list[float] = []
    with (
        workdir("bench-batch-", args.keep) as (tmp, logs),
        FakeSMTP(logs, BLOCKED_RELAY_ARGS) as fake,
    ):
        for round_no in range(args.rounds):
            key = secrets.token_urlsafe(24)
            service = Service(
                logs,
                Path(tmp) / f"batch-{round_no}.db",
                {
                    **fake.relay_env(),
                    "QUEUE_MAXSIZE": "10000000",
                },
                api_key=key,
                name=f"service-{round_no}",
            )
            with service:
                singles = request_cycle("127.0.0.1", service.port, "/send_async", key)
                batches = batch_requests(service.port, key)
                timed(service.port, singles, 2000, 32)  # warm-up
                timed(service.port, batches, 2, 2)
                order = ("batch", "single") if round_no % 2 == 0 else ("single", "batch")
                for side in order:
                    if side == "batch":
                        seconds, answered = timed(service.port, batches, args.batches, 4)
                        batch_rates.append(answered * BATCH / seconds)
                    else:
                        seconds, answered = timed(service.port, singles, messages, 32)
                        single_rates.append(answered / seconds)
            result.rounds.append(
                {
                    "batch_msgs_per_s": batch_rates[-1],
                    "single_msgs_per_s": single_rates[-1],
                    "ratio": batch_rates[-1] / single_rates[-1],
                    "load1": os.getloadavg()[0],
                }
            )
            print(
                f"round {round_no}: batches {batch_rates[-1]:.0f} msgs/s, single requests "
                f"{single_rates[-1]:.0f} msgs/s, ratio {batch_rates[-1] / single_rates[-1]:.2f}",
                flush=True,
            )
    result.value = median(batch_rates)
    result.baseline = median(single_rates)
    result.ratio = median([r["ratio"] for r in result.rounds])
    result.ok = result.ratio >= TARGET
    result.notes.append(f"{args.batches} batches of {BATCH} = {messages} messages a side a round")
    return finish(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())

"""What the benchmark scripts share: request bodies, the result record, the report line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.httpload import build_post, read_response
from bench.procs import load_average

# A typical transactional message: one recipient, a subject, a short text body.
BODY_LINE = "Hello from the benchmark. Your order has shipped.\n"


def send_body(n: int) -> bytes:
    return json.dumps(
        {
            "to": [f"user{n}@example.com"],
            "subject": f"benchmark message {n}",
            "body": BODY_LINE * 5,
        }
    ).encode()


def request_cycle(
    host: str, port: int, path: str, api_key: str, variants: int = 997
) -> list[bytes]:
    """Pre-built POST requests, distinct recipients, so the generator costs little."""
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    return [build_post(f"{host}:{port}", path, send_body(n), headers) for n in range(variants)]


@dataclass
class Result:
    """One benchmark: the service's number, the baseline's, their ratio and the target."""

    name: str
    metric: str  # what `value` and `baseline` measure, with units
    value: float  # the service (best round)
    baseline: float  # the baseline (best round)
    ratio: float  # as the target is stated (value/baseline, or its inverse for latency)
    target: str  # e.g. ">= 0.6"
    ok: bool
    rounds: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load_before: str = ""
    load_after: str = ""
    command: str = ""

    @classmethod
    def begin(cls, name: str, metric: str, target: str) -> Result:
        """An empty result, the machine's load noted before anything runs."""
        return cls(
            name=name,
            metric=metric,
            value=0,
            baseline=0,
            ratio=0,
            target=target,
            ok=False,
            load_before=load_average(),
        )


@contextlib.contextmanager
def workdir(prefix: str, keep: Path | None) -> Iterator[tuple[Path, Path]]:
    """(a temporary directory, where logs go: `keep` when given, else the same)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        logs = keep or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        yield Path(tmp), logs


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--rounds", type=int, default=2, help="measure each side this many times")
    p.add_argument("--json", type=Path, help="also write the result here (bench/run_all.py)")
    return p


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def finish(result: Result, json_path: Path | None) -> int:
    result.load_after = load_average()
    result.command = command_line()
    print(
        f"{result.name}: {result.metric}: service {result.value:.1f}, baseline "
        f"{result.baseline:.1f}, ratio {result.ratio:.2f} (target {result.target}) "
        f"{'OK' if result.ok else 'MISSED'}"
    )
    for note in result.notes:
        print(f"  {note}")
    print(f"  load average before {result.load_before}, after {result.load_after}")
    if json_path is not None:
        json_path.write_text(json.dumps(asdict(result), indent=2))
    return 0 if result.ok else 1


def cpu_count_note() -> str:
    return f"{os.cpu_count()} CPUs"


def post_many(
    host: str, port: int, requests: list[bytes], count: int, connections: int = 32
) -> Counter[int]:
    """Send exactly `count` requests over keep-alive connections; answers by status."""
    import uvloop

    statuses: Counter[int] = Counter()
    issued = [0]

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while issued[0] < count:
                writer.write(requests[issued[0] % len(requests)])
                issued[0] += 1
                statuses[await read_response(reader)] += 1
        finally:
            writer.close()

    async def run() -> None:
        await asyncio.gather(*(connection() for _ in range(connections)))

    uvloop.run(run())
    return statuses

"""Throughput of fakesmtp against a bare aiosmtpd handler, in the same run.

Sends N small messages over one persistent smtplib connection to (a) fakesmtp
with capture on and (b) an aiosmtpd server whose handler answers 250 and keeps
nothing, alternating rounds so both see the same machine load, and prints
msgs/s for each and the ratio a/b (target: a/b >= 0.8, a >= 2000 msgs/s).

    python bench/fakesmtp_bench.py --messages 5000 --rounds 3
    python bench/fakesmtp_bench.py --messages 5000 --rounds 3 --events

--events runs fakesmtp with its HTTP API on and one GET /api/events stream open,
read by curl: the cost of pushing every message as it is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import smtplib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiosmtpd.smtp import SMTP

from fakesmtp import FakeSMTPServer

MESSAGE = (
    b"From: bench@example.com\r\nTo: sink@example.com\r\nSubject: bench\r\n"
    b"Message-ID: <bench@example.com>\r\n\r\n" + b"A small message body.\r\n" * 10
)


class BareHandler:
    """The baseline: answer 250 and keep nothing."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


@contextmanager
def bare_aiosmtpd() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        handler = BareHandler()
        server = loop.run_until_complete(
            loop.create_server(lambda: SMTP(handler, hostname="bench", loop=loop), "127.0.0.1", 0)
        )
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def send_many(port: int, count: int) -> float:
    """Messages per second over one persistent connection, from a separate client process.

    A client thread in this process would fight the server thread for the GIL
    and measure that fight rather than the server.
    """
    result = subprocess.run(
        [sys.executable, __file__, "--client", str(port), "--messages", str(count)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(result.stdout.strip())


def client_main(port: int, count: int) -> float:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        started = time.perf_counter()
        for _ in range(count):
            client.sendmail("bench@example.com", ["sink@example.com"], MESSAGE)
        elapsed = time.perf_counter() - started
    return count / elapsed


def wait_for_stream(fake: FakeSMTPServer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while fake.stats()["event_streams"] < 1:
        if time.monotonic() > deadline:
            raise TimeoutError("the event reader did not connect")
        time.sleep(0.05)


@contextmanager
def event_reader(url: str | None) -> Iterator[None]:
    """One event stream open on ``url`` (none if ``url`` is None), from another process."""
    if url is None:
        yield
        return
    # curl, not a Python client: the reader shares the two cores with the server and
    # the sender, and must cost as little as it can.
    reader = subprocess.Popen(
        ["curl", "-sN", f"{url}/api/events"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield
    finally:
        reader.terminate()
        reader.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--events", action="store_true", help="HTTP API on, one GET /api/events stream open"
    )
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client is not None:
        print(client_main(args.client, args.messages))
        return 0
    fake_rates: list[float] = []
    bare_rates: list[float] = []
    fake_server = FakeSMTPServer(
        max_messages=max(args.messages, 10000), http_port=0 if args.events else None
    )
    with fake_server as fake, bare_aiosmtpd() as bare, event_reader(fake.http_url):
        if args.events:
            wait_for_stream(fake)
        send_many(fake.port, 200)  # warm up both
        send_many(bare, 200)
        for _ in range(args.rounds):
            fake_rates.append(send_many(fake.port, args.messages))
            bare_rates.append(send_many(bare, args.messages))
        stored = len(fake.messages())
    # Best of the rounds, as timeit does: on a shared machine the slow rounds
    # measure the neighbours; the median is printed too.
    a, b = max(fake_rates), max(bare_rates)
    a_med, b_med = statistics.median(fake_rates), statistics.median(bare_rates)
    print(f"messages per round: {args.messages}, rounds: {args.rounds}")
    if args.events:
        print("(a) with its HTTP API on and one event stream open")
    print(f"(a) fakesmtp, capture on: best {a:6.0f} msgs/s, median {a_med:6.0f}")
    print(f"(b) bare aiosmtpd, no-op:  best {b:6.0f} msgs/s, median {b_med:6.0f}")
    print(f"a/b = {a / b:.2f} (best), {a_med / b_med:.2f} (median); target >= 0.80")
    print(f"fakesmtp kept {stored} messages (bounded by max_messages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

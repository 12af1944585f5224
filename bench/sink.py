"""A bare SMTP sink in its own process: aiosmtpd on uvloop, answers 250, keeps nothing.

Postfix's smtp-sink is not installed on this machine; this is the fallback the
drain benchmark names. It prints one line once it listens:

    sink on 127.0.0.1:PORT

then, when the --expect'th message has arrived, one line with the wall-clock
times of the first and the last message and the count:

    done FIRST LAST COUNT

and on SIGTERM a last line `total COUNT` (every message received), then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import Any

from aiosmtpd.smtp import SMTP


class CountingHandler:
    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.count = 0
        self.first = 0.0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        self.count += 1
        if self.count == 1:
            self.first = now
        if self.count == self.expect:
            print(f"done {self.first:.6f} {now:.6f} {self.count}", flush=True)
        return "250 2.0.0 OK"


async def serve(port: int, expect: int) -> None:
    loop = asyncio.get_running_loop()
    handler = CountingHandler(expect)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink", data_size_limit=None, enable_SMTPUTF8=True),
        "127.0.0.1",
        port,
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"sink on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    print(f"total {handler.count}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--expect", type=int, default=0, help="report when this many arrived")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(serve(args.port, args.expect))
    else:
        uvloop.run(serve(args.port, args.expect))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A TCP proxy that adds a fixed one-way delay in each direction: a WAN in front of a relay.

    python bench/delay_proxy.py --listen 0 --target 127.0.0.1:2525 --delay 0.010

prints one line once it listens,

    delay_proxy on 127.0.0.1:PORT

and on SIGTERM or SIGINT a last line `total CONNECTIONS UP_BYTES DOWN_BYTES`, then exits 0.

Every chunk read from one side at time t is written to the other side at t + delay
(a timestamped queue per direction, one timer per direction, never a sleep per chunk),
so a 20 ms round trip costs 20 ms per round trip and not per chunk: throughput is not
capped at one chunk per delay. Byte order is kept within each direction. The upstream
connection is opened `delay` after the client's (its SYN travels one way), so the
relay's greeting reaches the client one round trip after it connected, as over a WAN.
TCP semantics: an EOF (half-close) from one side is passed on, after the delay, as a
write EOF to the other, and the other direction keeps flowing; once both directions
have ended, both sockets are closed. A reset or a failed connect on either side closes
both (data already queued towards the live side is still delivered first). Reading
pauses while more than HIGH_WATER bytes wait in a direction or the receiver's socket
buffer is full (the flow control a real path has). Stdlib only (asyncio, protocols).

As a module: `with DelayProxy(0, "127.0.0.1", 2525, 0.010) as proxy: proxy.port`
runs it in a subprocess (the default: its own GIL) or, with `thread=True`, in a
thread of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

HIGH_WATER = 4 * 1024 * 1024  # bytes queued in one direction before reading pauses
LOW_WATER = HIGH_WATER // 4
# epoll rounds its timeout up to whole milliseconds, so a timer fires up to 1 ms late:
# a chunk due within SLACK goes out now, which centres the error on the delay asked.
SLACK = 0.0005

_EOF = b""  # the queued marker for "the sender half-closed"


class Stats:
    def __init__(self) -> None:
        self.connections = 0
        self.up = 0  # client -> target bytes
        self.down = 0  # target -> client bytes


class _Direction:
    """One direction of one proxied connection: a timestamped queue and its timer."""

    def __init__(self, pair: _Pair, name: str) -> None:
        self.pair = pair
        self.name = name
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.timer: asyncio.TimerHandle | None = None
        self.source: asyncio.Transport | None = None
        self.sink: asyncio.Transport | None = None
        self.paused_full = False  # paused: too much queued
        self.paused_sink = False  # paused: the receiving socket's buffer is full
        self.ended = False  # EOF written to the sink
        self.close_after = False  # the source reset: close once the queue is out

    def push(self, data: bytes) -> None:
        loop = self.pair.loop
        self.queue.append((loop.time() + self.pair.delay, data))
        self.queued += len(data)
        if self.queued > HIGH_WATER and not self.paused_full:
            self.paused_full = True
            self._update_reading()
        self._arm()

    def _arm(self) -> None:
        if self.timer is None and self.queue and self.sink is not None:
            self.timer = self.pair.loop.call_at(self.queue[0][0] - SLACK, self.flush)

    def attach_sink(self, sink: asyncio.Transport) -> None:
        self.sink = sink
        self._arm()

    def flush(self) -> None:
        self.timer = None
        sink = self.sink
        if sink is None or sink.is_closing():
            return
        now = self.pair.loop.time() + SLACK
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            self.queued -= len(data)
            if not data:  # _EOF
                self.ended = True
                if sink.can_write_eof():
                    sink.write_eof()
                if self.close_after:
                    self.pair.close()
                else:
                    self.pair.direction_ended()
                return
            sink.write(data)
            if self.name == "up":
                self.pair.stats.up += len(data)
            else:
                self.pair.stats.down += len(data)
        if self.paused_full and self.queued < LOW_WATER:
            self.paused_full = False
            self._update_reading()
        if not self.queue and self.close_after:
            self.pair.close()
            return
        self._arm()

    def _update_reading(self) -> None:
        source = self.source
        if source is None or source.is_closing():
            return
        if self.paused_full or self.paused_sink:
            source.pause_reading()
        elif not source.is_reading():
            source.resume_reading()

    def sink_paused(self, paused: bool) -> None:
        self.paused_sink = paused
        self._update_reading()


class _Pair:
    """A client connection and its upstream: two directions, closed together."""

    def __init__(self, proxy: _ProxyServer) -> None:
        self.loop = proxy.loop
        self.delay = proxy.delay
        self.stats = proxy.stats
        self.proxy = proxy
        self.up = _Direction(self, "up")  # client -> target
        self.down = _Direction(self, "down")  # target -> client
        self.client: asyncio.Transport | None = None
        self.target: asyncio.Transport | None = None
        self.closed = False

    def client_connected(self, transport: asyncio.Transport) -> None:
        self.client = transport
        self.up.source = transport
        self.down.attach_sink(transport)
        self.stats.connections += 1
        self.loop.call_later(self.delay, self._connect_upstream)

    def _connect_upstream(self) -> None:
        if self.closed:
            return
        task = self.loop.create_task(
            self.loop.create_connection(
                lambda: _TargetProtocol(self), self.proxy.target_host, self.proxy.target_port
            )
        )
        self.proxy.tasks.add(task)
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[tuple[asyncio.BaseTransport, object]]) -> None:
        self.proxy.tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            self.close()

    def target_connected(self, transport: asyncio.Transport) -> None:
        if self.closed:
            transport.close()
            return
        self.target = transport
        self.down.source = transport
        self.up.attach_sink(transport)

    def direction_ended(self) -> None:
        if self.up.ended and self.down.ended:
            self.close()

    def lost(self, direction: _Direction, exc: Exception | None) -> None:
        """The source of `direction` is gone: deliver what it sent, then close both."""
        if self.closed:
            return
        if direction.ended or not direction.queue:
            self.close()
        else:
            direction.close_after = True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for direction in (self.up, self.down):
            if direction.timer is not None:
                direction.timer.cancel()
                direction.timer = None
            direction.queue.clear()
        for transport in (self.client, self.target):
            if transport is not None and not transport.is_closing():
                transport.close()
        self.proxy.pairs.discard(self)


class _SideProtocol(asyncio.Protocol):
    def __init__(self, pair: _Pair, reads: _Direction, writes: _Direction) -> None:
        self.pair = pair
        self.reads = reads  # the direction whose source is this socket
        self.writes = writes  # the direction whose sink is this socket

    def data_received(self, data: bytes) -> None:
        if data:
            self.reads.push(data)

    def eof_received(self) -> bool:
        self.reads.push(_EOF)
        return True  # keep the socket open for the other direction (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pair.lost(self.reads, exc)

    def pause_writing(self) -> None:
        self.writes.sink_paused(True)

    def resume_writing(self) -> None:
        self.writes.sink_paused(False)


class _ClientProtocol(_SideProtocol):
    def __init__(self, proxy: _ProxyServer) -> None:
        pair = _Pair(proxy)
        proxy.pairs.add(pair)
        super().__init__(pair, pair.up, pair.down)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.pair.client_connected(transport)


class _TargetProtocol(_SideProtocol):
    def __init__(self, pair: _Pair) -> None:
        super().__init__(pair, pair.down, pair.up)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.pair.target_connected(transport)


class _ProxyServer:
    def __init__(self, target_host: str, target_port: int, delay: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.target_host = target_host
        self.target_port = target_port
        self.delay = delay
        self.stats = Stats()
        self.pairs: set[_Pair] = set()
        self.tasks: set[asyncio.Task[tuple[asyncio.BaseTransport, object]]] = set()

    async def listen(self, host: str, port: int, backlog: int = 1024) -> asyncio.Server:
        return await self.loop.create_server(
            lambda: _ClientProtocol(self), host, port, backlog=backlog, reuse_address=True
        )

    def close_all(self) -> None:
        for pair in list(self.pairs):
            pair.close()


async def serve(
    listen_host: str,
    listen_port: int,
    target_host: str,
    target_port: int,
    delay: float,
    ready: threading.Event | None = None,
    stop: asyncio.Event | None = None,
    on_port: list[int] | None = None,
    announce: bool = False,
) -> Stats:
    """Run until `stop` is set (or SIGTERM/SIGINT when run as the CLI)."""
    proxy = _ProxyServer(target_host, target_port, delay)
    server = await proxy.listen(listen_host, listen_port)
    port: int = server.sockets[0].getsockname()[1]
    stop = stop or asyncio.Event()
    if announce:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        print(f"delay_proxy on {listen_host}:{port}", flush=True)
    if on_port is not None:
        on_port.append(port)
    if ready is not None:
        ready.set()
    await stop.wait()
    server.close()
    proxy.close_all()
    await server.wait_closed()
    if announce:
        stats = proxy.stats
        print(f"total {stats.connections} {stats.up} {stats.down}", flush=True)
    return proxy.stats


class DelayProxy:
    """`with DelayProxy(0, host, port, 0.010) as p:` connect to 127.0.0.1:p.port.

    In a subprocess (bench/delay_proxy.py, its own interpreter) unless thread=True.
    `log_dir`: where the subprocess's stderr goes (delay_proxy.log), else discarded."""

    def __init__(
        self,
        listen_port: int,
        target_host: str,
        target_port: int,
        delay: float = 0.010,
        *,
        listen_host: str = "127.0.0.1",
        thread: bool = False,
        python: str = sys.executable,
        log_dir: Path | None = None,
    ) -> None:
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.target_host = target_host
        self.target_port = target_port
        self.delay = delay
        self.thread = thread
        self.python = python
        self.log_dir = log_dir
        self.port = 0
        self.stats: Stats | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def start(self, timeout: float = 20.0) -> DelayProxy:
        if self.thread:
            self._start_thread(timeout)
        else:
            self._start_process(timeout)
        return self

    def _start_process(self, timeout: float) -> None:
        if self.log_dir is not None:
            self._log = (self.log_dir / "delay_proxy.log").open("ab")
        command = [
            self.python,
            str(Path(__file__).resolve()),
            "--listen",
            f"{self.listen_host}:{self.listen_port}",
            "--target",
            f"{self.target_host}:{self.target_port}",
            "--delay",
            repr(self.delay),
        ]
        self._proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self._log if self._log is not None else subprocess.DEVNULL,
        )
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline().decode(errors="replace").strip() if ready else ""
        if not line.startswith("delay_proxy on "):
            self.stop()
            raise RuntimeError(f"delay_proxy did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def _start_thread(self, timeout: float) -> None:
        ready = threading.Event()
        ports: list[int] = []

        def run() -> None:
            async def main() -> None:
                self._loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()
                self.stats = await serve(
                    self.listen_host,
                    self.listen_port,
                    self.target_host,
                    self.target_port,
                    self.delay,
                    ready=ready,
                    stop=self._stop,
                    on_port=ports,
                )

            asyncio.run(main())

        self._thread = threading.Thread(target=run, name="delay-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or not ports:
            raise RuntimeError("delay_proxy thread did not start")
        self.port = ports[0]

    def stop(self) -> None:
        if self._thread is not None:
            if self._loop is not None and self._stop is not None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
            self._thread = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    out, _ = self._proc.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    out, _ = self._proc.communicate(timeout=10)
                for line in out.decode(errors="replace").splitlines():
                    if line.startswith("total "):
                        stats = Stats()
                        _, conns, up, down = line.split()
                        stats.connections, stats.up, stats.down = int(conns), int(up), int(down)
                        self.stats = stats
            elif self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _host_port(text: str, default_host: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    return (host or default_host) if sep else default_host, int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="0", help="[HOST:]PORT to listen on (0: a free port)")
    p.add_argument("--target", required=True, help="HOST:PORT to forward to")
    p.add_argument("--delay", type=float, default=0.010, help="one-way delay, seconds")
    args = p.parse_args(argv)
    listen_host, listen_port = _host_port(args.listen, "127.0.0.1")
    target_host, target_port = _host_port(args.target, "127.0.0.1")
    asyncio.run(
        serve(listen_host, listen_port, target_host, target_port, args.delay, announce=True)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

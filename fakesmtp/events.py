"""GET /api/events: every change to the captured mail, pushed as server-sent events.

A stream is ``text/event-stream``; each event is an ``event:`` name and one
``data:`` line of JSON::

    ready    {}                 first: from here on this stream hears every change
    message  summary            a message was stored (an item of GET /api/messages)
    delete   summary            a message was deleted
    clear    {}                 every message was forgotten
    gap      {"missed": N}      this stream fell behind and N events were dropped:
                                list again (GET /api/messages) to catch up

A comment line (``: keep-alive``) goes out when nothing else has for
``KEEPALIVE`` seconds. ``?timeout=SECONDS`` ends the stream after that long, so a
client waiting for one message needs no timer of its own (fakesmtp.client).

The store tells :class:`EventHub` of each change on the thread that made it; the
hub hands it to the event loop the HTTP app runs on, and there fans one encoded
event out to every stream. Each stream holds at most ``QUEUE_SIZE`` events not yet
written: a client that reads too slowly (or has vanished without a word) loses the
rest until it catches up, and is then told how many with ``gap``, so it can neither
grow the server's memory nor hold up capture. ``EventHub.close`` ends every stream,
so a stopping server never waits on one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from fakesmtp.capture import CapturedMessage, StoreListener

# Events one stream may hold unwritten (about 300 bytes each) before it drops them.
QUEUE_SIZE = 1000
# Seconds of silence before a keep-alive comment; also how soon a dead peer is noticed
# when the server has nothing else to write to it.
KEEPALIVE = 15.0
# EventSource reconnects after this many milliseconds if the stream breaks.
_RETRY_MS = 1000

Subscribe = Callable[["StoreListener"], Callable[[], None]]


def encode(name: str, data: dict[str, Any]) -> bytes:
    """One event in the text/event-stream format (one data line: JSON has no newline)."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


_KEEPALIVE_LINE = b": keep-alive\n\n"


class EventStream:
    """One client's bounded backlog of encoded events, filled and drained on the loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending: deque[bytes] = deque()
        self.missed = 0
        self.closed = False
        self.wake = asyncio.Event()

    def offer(self, chunk: bytes) -> None:
        if self.closed:
            return
        # Once one event is dropped, drop every later one until the backlog is written:
        # the `gap` then stands exactly where the lost events were.
        if self.missed or len(self.pending) >= self.limit:
            self.missed += 1
        else:
            self.pending.append(chunk)
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    async def chunks(self, keepalive: float, duration: float | None) -> AsyncIterator[bytes]:
        """What to write, as it comes: the backlog in one chunk, then a gap if any."""
        loop = asyncio.get_running_loop()
        deadline = None if duration is None else loop.time() + duration
        yield f"retry: {_RETRY_MS}\n".encode() + encode("ready", {})
        while True:
            if self.pending:
                chunk = b"".join(self.pending)
                self.pending.clear()
                yield chunk
                continue  # more may have come while that was written
            if self.missed:
                missed, self.missed = self.missed, 0
                yield encode("gap", {"missed": missed})
                continue
            if self.closed:
                return
            wait = keepalive if deadline is None else min(keepalive, deadline - loop.time())
            if wait <= 0:
                return
            self.wake.clear()
            try:
                async with asyncio.timeout(wait):
                    await self.wake.wait()
            except TimeoutError:
                if deadline is None or loop.time() < deadline:
                    yield _KEEPALIVE_LINE


class EventHub:
    """Fans the store's changes out to the open event streams of one server.

    ``listener`` is what the store calls; it may be called on any thread. The
    hub binds to the running loop on ``start`` (or on the first stream)."""

    def __init__(
        self,
        subscribe: Subscribe,
        *,
        queue_size: int | None = None,
        keepalive: float | None = None,
    ) -> None:
        self._subscribe = subscribe
        self._unsubscribe: Callable[[], None] | None = None
        self.queue_size = QUEUE_SIZE if queue_size is None else queue_size
        self.keepalive = KEEPALIVE if keepalive is None else keepalive
        self._streams: set[EventStream] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.closed = False

    def start(self) -> None:
        """Bind to the running loop and hear the store (idempotent; on the loop)."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._unsubscribe = self._subscribe(self.listener)

    def close(self) -> None:
        """End every stream and refuse new ones (on the loop)."""
        self.closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for stream in list(self._streams):
            stream.close()

    def __len__(self) -> int:
        """Streams open now."""
        return len(self._streams)

    def listener(self, kind: str, message: CapturedMessage | None) -> None:
        """The store's callback: hand the change to the loop, never wait for it."""
        loop = self._loop
        if loop is None or not self._streams:
            return
        if threading.get_ident() == self._loop_thread:
            # Capture itself, on the loop: the SMTP reply goes out first.
            loop.call_soon(self._publish, kind, message)
        else:
            # RuntimeError: the loop has closed, so no stream is left to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._publish, kind, message)

    def _publish(self, kind: str, message: CapturedMessage | None) -> None:
        if not self._streams:
            return
        # Encoded once for every stream; the summary parses the message on first use.
        chunk = encode(kind, message.summary() if message is not None else {})
        for stream in self._streams:
            stream.offer(chunk)

    def attach(self, stream: EventStream) -> None:
        """Start telling ``stream`` of every change (on the loop); a closed hub ends it."""
        self.start()
        if self.closed:
            stream.close()
        else:
            self._streams.add(stream)

    def release(self, stream: EventStream) -> None:
        stream.close()
        self._streams.discard(stream)


class EventStreamResponse(StreamingResponse):
    """A text/event-stream of one EventStream, released however the response ends
    (the client leaves, the server stops, the duration runs out)."""

    def __init__(self, hub: EventHub, duration: float | None) -> None:
        self._hub = hub
        self._stream = EventStream(hub.queue_size)
        super().__init__(
            self._stream.chunks(hub.keepalive, duration),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Attached before the first byte, so every change after `ready` reaches it.
        self._hub.attach(self._stream)
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._hub.release(self._stream)


def _duration(request: Request) -> float | None:
    value = request.query_params.get("timeout")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError("timeout must be a positive number of seconds")
    return seconds


async def events(request: Request) -> Response:
    """GET /api/events[?timeout=SECONDS]."""
    try:
        duration = _duration(request)
    except ValueError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=400)
    hub: EventHub = request.app.state.events
    return EventStreamResponse(hub, duration)

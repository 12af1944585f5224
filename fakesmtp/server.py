"""FakeSMTPServer: the SMTP server and its HTTP API on one event loop in one background thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, overload

from fakesmtp import replies
from fakesmtp.capture import CapturedMessage, MessageStore, StoreListener
from fakesmtp.faults import FaultRule, FaultSet
from fakesmtp.options import ServerOptions
from fakesmtp.policies import Greylist, TokenBucket
from fakesmtp.protocol import ServerState, abort_transport, make_protocol_factory

if TYPE_CHECKING:
    from fakesmtp.events import EventHub

log = logging.getLogger("fakesmtp")

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 15.0
# Part of _STOP_TIMEOUT: how long a stopping server lets DSNs in flight finish.
_BOUNCE_DRAIN_TIMEOUT = 5.0


class FakeSMTPServer:
    """A fake SMTP relay that captures mail and fails on purpose, run in a background thread.

    Takes the arguments of :class:`~fakesmtp.options.ServerOptions`, e.g.
    ``FakeSMTPServer(port=0, faults=[rule], greylist=1.0)``, or one ready
    ``options=ServerOptions(...)``. Use it as a context manager (or
    ``start()``/``stop()``). ``start`` returns once SMTP and HTTP are listening
    and re-raises any error from the server thread; ``stop`` re-raises the first
    error a connection handler hit, so a bug in the fake fails the test that
    found it.
    """

    def __init__(self, *args: Any, options: ServerOptions | None = None, **kwargs: Any) -> None:
        # One list of options, ServerOptions' fields, so it is not repeated here.
        if options is None:
            options = ServerOptions(*args, **kwargs)
        elif args or kwargs:
            raise TypeError("pass ServerOptions or its arguments, not both")
        self.options = options
        # Bound ports replace 0 once listening.
        self.host = options.host
        self.port = options.port
        self.http_port = options.http_port
        self._state = _new_state(options)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._events: EventHub | None = None

    # life cycle ------------------------------------------------------------
    @property
    def http_url(self) -> str | None:
        if self.http_port is None:
            return None
        return f"http://{self.host}:{self.http_port}"

    def __enter__(self) -> FakeSMTPServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Never hide the test's own failure behind one of ours.
        self.stop(raise_errors=exc_type is None)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this FakeSMTPServer was already started")
        self._thread = threading.Thread(target=self._run, name="fakesmtp", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError(f"fakesmtp did not start within {_START_TIMEOUT:.0f}s")
        if self._error is not None:
            self._thread.join(_STOP_TIMEOUT)
            raise self._error

    def stop(self, *, raise_errors: bool = True) -> None:
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and event is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(event.set)
        thread.join(_STOP_TIMEOUT)
        if not raise_errors:
            return
        if self._error is not None:
            raise self._error
        with self._state.errors_lock:
            errors = list(self._state.errors)
        if errors:
            raise errors[0]

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop.set_exception_handler(_quiet_exception_handler)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # re-raised in start() or stop()
            self._error = exc
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _ssl_context(self) -> ssl.SSLContext | None:
        options = self.options
        if options.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(options.tls_cert, options.tls_key)
        return context

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        context = self._ssl_context()
        implicit_tls = self.options.implicit_tls
        factory = make_protocol_factory(
            self._state,
            loop,
            starttls_context=None if implicit_tls else context,
            require_tls=self.options.require_tls,
            max_size=self.options.max_size,
            smtputf8=self.options.smtputf8,
        )
        smtp = await loop.create_server(
            factory,
            self.host,
            self.port,
            ssl=context if implicit_tls else None,
            reuse_address=True,
        )
        self.port = smtp.sockets[0].getsockname()[1]
        http_server = None
        http_task: asyncio.Task[None] | None = None
        try:
            if self.http_port is not None:
                http_server, http_task = await self._start_http()
            self._ready.set()
            await self._stop_event.wait()
        finally:
            smtp.close()
            self._abort_active()
            if self._events is not None:
                self._events.close()  # open event streams end now, not at uvicorn's timeout
            if http_server is not None and http_task is not None:
                http_server.should_exit = True
                await http_task
            await smtp.wait_closed()
            # A relay that hangs must not hold up the stop: give up on its DSNs.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_BOUNCE_DRAIN_TIMEOUT):
                    await self._state.bouncer.drain()
            # A connection accepted just before close() gets its protocol while the
            # awaits above run: abort those too, and let the loop run their
            # connection_lost, so no socket is left to the garbage collector.
            await asyncio.sleep(0)
            self._abort_active()
            await asyncio.sleep(0)

    def _abort_active(self) -> None:
        for protocol in list(self._state.active):
            abort_transport(protocol.transport)

    async def _start_http(self) -> tuple[Any, asyncio.Task[None]]:
        import uvicorn  # imported here: only servers with an HTTP API pay for it

        from fakesmtp.events import EventHub
        from fakesmtp.http import create_app

        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.http_port or 0))
        except OSError:
            sock.close()
            raise
        self.http_port = sock.getsockname()[1]
        self._events = EventHub(self.subscribe)
        self._events.start()
        config = uvicorn.Config(
            create_app(self, events=self._events),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("fakesmtp HTTP API stopped during start-up")
            await asyncio.sleep(0.01)
        return server, task

    # captured mail -------------------------------------------------------------
    def messages(self) -> list[CapturedMessage]:
        """Captured messages, newest first (a snapshot)."""
        return self._state.store.snapshot()

    def message(self, message_id: str) -> CapturedMessage | None:
        return self._state.store.get(message_id)

    @overload
    def wait_for(
        self, predicate: Callable[[CapturedMessage], bool], timeout: float = 10.0
    ) -> CapturedMessage: ...

    @overload
    def wait_for(self, predicate: int, timeout: float = 10.0) -> list[CapturedMessage]: ...

    def wait_for(
        self, predicate: Callable[[CapturedMessage], bool] | int, timeout: float = 10.0
    ) -> CapturedMessage | list[CapturedMessage]:
        """The first message, held already (oldest first) or arriving within ``timeout``
        seconds, for which ``predicate(message)`` is true; TimeoutError otherwise.

        The predicate runs on the calling thread. An int instead of a predicate is
        :meth:`wait_for_count` (the older form of this call)."""
        if isinstance(predicate, int):
            return self.wait_for_count(predicate, timeout)
        deadline = time.monotonic() + timeout
        arrived: queue.SimpleQueue[CapturedMessage] = queue.SimpleQueue()

        def listener(kind: str, message: CapturedMessage | None) -> None:
            if kind == "message" and message is not None:
                arrived.put(message)

        # Listen first, then look at what is held: a message stored in between is
        # seen twice at worst, never missed.
        unsubscribe = self.subscribe(listener)
        try:
            for message in reversed(self.messages()):
                if predicate(message):
                    return message
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    message = arrived.get(timeout=remaining)
                except queue.Empty:
                    break
                if predicate(message):
                    return message
        finally:
            unsubscribe()
        raise TimeoutError(_no_match(predicate, timeout, self.messages()))

    def wait_for_count(self, count: int, timeout: float = 10.0) -> list[CapturedMessage]:
        """Block until at least ``count`` messages are held, then all of them, newest
        first; TimeoutError otherwise."""
        return self._state.store.wait_for(count, timeout)

    def clear_messages(self) -> None:
        self._state.store.clear()

    def delete_messages(self, message_ids: Iterable[str]) -> int:
        """Forget these messages; returns how many there were."""
        return len(self._state.store.delete(message_ids))

    def subscribe(self, listener: StoreListener) -> Callable[[], None]:
        """Hear of every stored, deleted or cleared message at once (MessageStore.subscribe)."""
        return self._state.store.subscribe(listener)

    # faults --------------------------------------------------------------------
    def add_fault(self, rule: FaultRule) -> str:
        """Add a rule after the existing ones; returns its id."""
        return self._state.faults.add(rule)

    def remove_fault(self, rule_id: str) -> bool:
        return self._state.faults.remove(rule_id)

    def clear_faults(self) -> None:
        self._state.faults.clear()

    def faults(self) -> list[dict[str, Any]]:
        """The rules in force, in order, with ``id``, ``remaining`` and ``fired``."""
        return self._state.faults.snapshot()

    def fault(self, rule_id: str) -> dict[str, Any] | None:
        active = self._state.faults.get(rule_id)
        return active.to_dict() if active is not None else None

    # counters ------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counts: connections, messages, stored, faults fired, bounces, replies by code,
        and ``event_streams`` (GET /api/events clients connected now)."""
        streams = len(self._events) if self._events is not None else 0
        return {**self._state.stats(), "event_streams": streams}


def _no_match(predicate: object, timeout: float, held: list[CapturedMessage]) -> str:
    """Why wait_for gave up: what it waited for, and what there was instead."""
    what = getattr(predicate, "__qualname__", None) or repr(predicate)
    subjects = ", ".join(repr(m.subject) for m in held[:5])
    more = f", and {len(held) - 5} more" if len(held) > 5 else ""
    return (
        f"no captured message matched {what} within {timeout}s; "
        f"{len(held)} held (newest first: {subjects or 'none'}{more})"
    )


def _new_state(options: ServerOptions) -> ServerState:
    """What this server's connections share, built from its options."""
    clock = options.clock
    state = ServerState(
        store=MessageStore(options.max_messages),
        faults=FaultSet(random.Random(options.seed)),  # noqa: S311 - chaos, not security
        auth=options.auth,
        latency=options.latency,
        implicit_tls=options.implicit_tls,
        blackhole=options.blackhole,
        pipelining=options.pipelining,
        chunking=options.chunking,
        max_per_connection=options.max_per_connection,
        greylist=Greylist(options.greylist, clock) if options.greylist is not None else None,
        rate_limit=TokenBucket(options.limit, clock) if options.limit is not None else None,
        rate_limit_reply=(
            replies.RATE_LIMITED_CLOSING
            if options.rate_limit_code == 421
            else replies.RATE_LIMITED_TEMPORARY
        ),
        bounce_relay=options.bounce_relay,
    )
    if options.sleep is not None:
        state.sleep = options.sleep
    for rule in options.faults:
        state.faults.add(rule)
    return state


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # Clients that vanish mid-handshake are everyday traffic for a fake relay;
    # log them quietly instead of printing tracebacks over the test output.
    exc = context.get("exception")
    if isinstance(exc, ssl.SSLError | ConnectionError | OSError | asyncio.CancelledError):
        log.debug("fakesmtp connection error: %s", context.get("message"))
        return
    loop.default_exception_handler(context)

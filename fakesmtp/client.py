"""FakeSMTPClient: look at and wait for the mail of a fakesmtp running in another process.

For tests that start ``python -m fakesmtp --http-port ...`` (or any fakesmtp
with its HTTP API on), what ``FakeSMTPServer`` offers in process::

    with FakeSMTPClient("http://127.0.0.1:8025") as smtp:
        ...                                          # make the code under test send
        message = smtp.wait_for(lambda m: m.subject == "Welcome", timeout=10)
        smtp.message(message.id)["text"]             # GET /api/messages/{id}
        smtp.wait_for_count(3)                       # at least three held
        smtp.messages()                              # newest first

Waiting listens on GET /api/events (fakesmtp.events) and lists what is already
held once the stream is ready, so a message is seen the moment it is stored,
whether it came before the call or during it: no polling, no sleeping.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx

# How long connecting and each plain request may take, in seconds.
_REQUEST_TIMEOUT = 10.0
# A stream's reads wait at most its own duration plus this (a server that stopped
# answering mid-stream), the server ends it on time otherwise.
_STREAM_GRACE = 5.0


@dataclass(frozen=True)
class MessageSummary:
    """An item of GET /api/messages: the fields a ``CapturedMessage`` has by the same
    names, so one predicate serves ``FakeSMTPServer.wait_for`` and this client."""

    id: str
    mail_from: str
    rcpt_tos: list[str]
    subject: str | None
    message_id: str | None
    received_at: datetime
    size: int
    tls: bool
    auth_user: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MessageSummary:
        return cls(
            id=data["id"],
            mail_from=data["mail_from"],
            rcpt_tos=list(data["rcpt_tos"]),
            subject=data["subject"],
            message_id=data["message_id"],
            received_at=datetime.fromisoformat(data["received_at"]),
            size=data["size"],
            tls=data["tls"],
            auth_user=data["auth_user"],
        )


Predicate = Callable[[MessageSummary], bool]


@dataclass(frozen=True)
class Event:
    """One server-sent event: its name and its data, parsed from JSON."""

    name: str
    data: dict[str, Any]


def parse_events(lines: Iterator[str]) -> Iterator[Event]:
    """Events from the lines of a text/event-stream (comments and ``retry`` skipped)."""
    name, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield Event(name, json.loads("\n".join(data)))
            name, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)


class FakeSMTPClient:
    """The HTTP API of one fakesmtp, at ``http_url`` (e.g. ``http://127.0.0.1:8025``).

    ``timeout`` bounds connecting and each request; ``transport`` replaces httpx's
    own (e.g. an ``httpx.MockTransport``)."""

    def __init__(
        self,
        http_url: str,
        *,
        timeout: float = _REQUEST_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http_url = http_url.rstrip("/")
        self._timeout = timeout
        self._http = httpx.Client(base_url=self.http_url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FakeSMTPClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _json(self, method: str, path: str) -> Any:
        response = self._http.request(method, path)
        response.raise_for_status()
        return response.json() if response.content else None

    def messages(self) -> list[MessageSummary]:
        """Every captured message, newest first."""
        body = self._json("GET", "/api/messages")
        return [MessageSummary.from_json(item) for item in body["messages"]]

    def message(self, message_id: str) -> dict[str, Any]:
        """One message: the summary plus ``headers``, ``text``, ``html``, ``raw``
        (GET /api/messages/{id}); httpx.HTTPStatusError (404) if unknown."""
        detail: dict[str, Any] = self._json("GET", f"/api/messages/{message_id}")
        return detail

    def clear(self) -> None:
        """Forget every message."""
        self._json("DELETE", "/api/messages")

    def wait_for(self, predicate: Predicate, timeout: float = 10.0) -> MessageSummary:
        """The first message, held already (oldest first) or arriving within ``timeout``
        seconds, for which ``predicate(summary)`` is true; TimeoutError otherwise."""

        def first_match(held: list[MessageSummary]) -> MessageSummary | None:
            return next((m for m in reversed(held) if predicate(m)), None)

        with self._events(timeout) as events:
            for event in events:
                if event.name in ("ready", "gap"):  # all that is held, again after a gap
                    if (found := first_match(self.messages())) is not None:
                        return found
                elif event.name == "message":
                    summary = MessageSummary.from_json(event.data)
                    if predicate(summary):
                        return summary
        what = getattr(predicate, "__qualname__", None) or repr(predicate)
        raise TimeoutError(
            f"no message at {self.http_url} matched {what} within {timeout}s; "
            f"{_describe(self.messages())}"
        )

    def wait_for_count(self, count: int, timeout: float = 10.0) -> list[MessageSummary]:
        """Block until at least ``count`` messages are held, then all of them, newest
        first; TimeoutError otherwise."""
        held = 0
        with self._events(timeout) as events:
            for event in events:
                if event.name in ("ready", "gap"):
                    held = len(self.messages())
                elif event.name == "message":
                    held += 1
                elif event.name == "delete":
                    held -= 1
                elif event.name == "clear":
                    held = 0
                if held >= count:
                    messages = self.messages()
                    if len(messages) >= count:
                        return messages
                    held = len(messages)  # deleted meanwhile: count on from here
        messages = self.messages()
        raise TimeoutError(
            f"expected at least {count} message(s) at {self.http_url} within {timeout}s, "
            f"got {len(messages)}"
        )

    @contextlib.contextmanager
    def _events(self, duration: float) -> Iterator[Iterator[Event]]:
        """The events of one GET /api/events, which the server ends after ``duration``."""
        timeout = httpx.Timeout(self._timeout, read=duration + _STREAM_GRACE)
        with self._http.stream(
            "GET", "/api/events", params={"timeout": max(duration, 0.001)}, timeout=timeout
        ) as response:
            response.raise_for_status()
            yield parse_events(response.iter_lines())


def _describe(held: list[MessageSummary]) -> str:
    subjects = ", ".join(repr(m.subject) for m in held[:5])
    more = f", and {len(held) - 5} more" if len(held) > 5 else ""
    return f"{len(held)} held (newest first: {subjects or 'none'}{more})"

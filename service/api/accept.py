"""The accept step both send endpoints share: the checks that need settings, the
render, the size check, and whether the relay can carry the message.

Each refusal is an HTTP error raised here (422 naming the field, 413), before
anything is stored or sent.
"""

from __future__ import annotations

import asyncio
import dataclasses

from fastapi import HTTPException

from service import mailer
from service.api.errors import validation_error
from service.api.offload import run_in_daemon_thread
from service.api.relay import RelayFeatures
from service.bounces.verp import verp_address
from service.config import Settings
from service.models import SendRequest
from service.syntax import canonical_address, parse_address
from service.types import RenderedMessage

__all__ = [
    "MAX_SCHEDULE_AHEAD",
    "SenderPolicy",
    "check_request",
    "refuse_send_at",
    "render",
    "send_time",
]

# How far ahead `send_at` may be (the contract's 30 days).
MAX_SCHEDULE_AHEAD = 30 * 24 * 3600.0


class SenderPolicy:
    """ALLOWED_SENDERS: exact addresses and @domains; MAIL_FROM is always allowed."""

    def __init__(self, settings: Settings) -> None:
        self.open = settings.allowed_senders is None
        self.addresses: set[str] = set()
        self.domains: set[str] = set()
        for entry in [*(settings.allowed_senders or []), settings.mail_from]:
            entry = entry.strip()
            if entry.startswith("@"):
                self.domains.add(canonical_address("x" + entry).split("@", 1)[1])
            else:
                self.addresses.add(canonical_address(parse_address(entry)[1]))

    def allows(self, address: str) -> bool:
        if self.open:
            return True
        canonical = canonical_address(parse_address(address)[1])
        return canonical in self.addresses or canonical.rsplit("@", 1)[1] in self.domains


def check_request(payload: SendRequest, settings: Settings, policy: SenderPolicy) -> None:
    """MAX_RECIPIENTS and ALLOWED_SENDERS, as 422s in the shape of the schema's own."""
    if payload.recipient_count > settings.max_recipients:
        raise validation_error(
            ("body",),
            f"too many recipients: {payload.recipient_count} in to, cc and bcc together, "
            f"at most {settings.max_recipients} (MAX_RECIPIENTS)",
        )
    if payload.from_ is not None and not policy.allows(payload.from_):
        raise validation_error(
            ("body", "from"),
            "this sender is not allowed: use an address or domain listed in "
            "ALLOWED_SENDERS, or leave 'from' out to send as MAIL_FROM",
            payload.from_,
        )


def send_time(payload: SendRequest, now: float) -> float | None:
    """The epoch time a scheduled message is due, or None to send now (no send_at,
    or one in the past). Further than 30 days ahead is a 422."""
    if payload.send_at is None:
        return None
    due = payload.send_at.timestamp()
    if due - now > MAX_SCHEDULE_AHEAD:
        raise validation_error(
            ("body", "send_at"),
            "send_at is more than 30 days ahead: schedule it at most 30 days from now",
            payload.send_at.isoformat(),
        )
    return due if due > now else None


def refuse_send_at(payload: SendRequest) -> None:
    if payload.send_at is not None:
        raise validation_error(
            ("body", "send_at"),
            "/send sends now and cannot schedule: use /send_async with send_at",
            payload.send_at.isoformat(),
        )


def render(payload: SendRequest, settings: Settings, record_id: str) -> RenderedMessage:
    """The message as it will go on the wire, held to MAX_MESSAGE_BYTES."""
    try:
        rendered = mailer.render_message(
            payload, default_from=settings.mail_from, record_id=record_id
        )
    except (ValueError, UnicodeError) as exc:
        raise validation_error(("body",), f"the message cannot be built: {exc}") from None
    if settings.bounce_address is not None:
        # VERP: a bounce names the record it is for in the address it comes back to.
        rendered = dataclasses.replace(
            rendered, mail_from=verp_address(settings.bounce_address, record_id)
        )
    if len(rendered.data) > settings.max_message_bytes:
        raise HTTPException(
            status_code=413,
            detail=f"the built message is {len(rendered.data)} bytes, over "
            f"{settings.max_message_bytes} (MAX_MESSAGE_BYTES): send fewer or smaller "
            "attachments (they travel base64-encoded, a third larger)",
        )
    return rendered


async def check_relay_can_carry(
    rendered: RenderedMessage, relay: RelayFeatures, slots: asyncio.Semaphore
) -> None:
    """422 for a message the relay is known unable to carry (nothing stored or sent).
    Only a message that needs SMTPUTF8 asks (callers check `rendered.smtputf8`)."""
    if await run_in_daemon_thread(slots, relay.offers, "smtputf8") is False:
        raise validation_error(
            ("body",),
            "an address has a non-ASCII local part (before the @), which needs SMTPUTF8, "
            "and the relay does not offer it; use an ASCII address",
        )

"""POST /send's delivery: send now with inline retries, record every attempt and the
answer (so that an idempotent repeat can replay it). Runs in a request's daemon
thread (api/offload.py)."""

from __future__ import annotations

import logging
import time

from service.api.services import Services
from service.errors import DatabaseUnavailable, DeliveryError, PermanentDeliveryError
from service.models import RejectedRecipientModel, SendResponse
from service.retry import Decision, send_with_retries
from service.types import Outcome, RejectedRecipient, RenderedMessage

__all__ = ["deliver_sync", "rejected_model"]

logger = logging.getLogger(__name__)


def rejected_model(item: RejectedRecipient) -> RejectedRecipientModel:
    return RejectedRecipientModel(recipient=item.recipient, code=item.code, message=item.message)


def deliver_sync(services: Services, message_id: str, rendered: RenderedMessage) -> tuple[int, str]:
    """Returns (status code, JSON body): 200 sent, 500 failed (retries included)."""
    outbox, metrics = services.outbox, services.metrics
    attempts = 0
    started = time.time()
    finished = 0.0  # when the relay last answered

    def on_attempt(number: int, error: DeliveryError | None, decision: Decision) -> None:
        nonlocal attempts, started, finished
        attempts = number
        finished = time.time()
        outcome = {"done": "sent", "retry": "retried", "fail": "failed"}[decision.action]
        code = error.code if error else None
        metrics.record_delivery("sync", outcome, code, time.time() - started)
        if not decision.final:
            # The last attempt is written by finish_sync together with the answer.
            outbox.record_attempt(
                Outcome(
                    id=message_id,
                    attempt=number,
                    error=error,
                    started_at=started,
                    finished_at=finished,
                )
            )
            started = time.time()

    error: DeliveryError | None = None
    rejected: list[RejectedRecipient] = []
    try:
        result = send_with_retries(
            services.sync_sender.send,
            rendered,
            services.retry,
            sleep=services.sleep,
            on_attempt=on_attempt,
        )
        rejected = list(result.rejected)
    except DeliveryError as exc:
        error = exc
        logger.warning("send failed: %s", exc, extra={"message_id": rendered.message_id})
    except Exception as exc:  # a bug, not a delivery failure: record it, answer 500
        logger.exception(
            "unexpected error while sending", extra={"message_id": rendered.message_id}
        )
        error = PermanentDeliveryError(f"internal error: {type(exc).__name__}")
    response = SendResponse(
        ok=error is None,
        id=message_id,
        status="sent" if error is None else "failed",
        message_id=rendered.message_id,
        # With its code and recipient, as the record's last_error keeps it.
        error=None if error is None else str(error),
        rejected=[rejected_model(item) for item in rejected],
    )
    code = 200 if error is None else 500
    body = response.model_dump_json()
    outcome = Outcome(
        id=message_id,
        attempt=max(attempts, 1),
        error=error,
        rejected=rejected,
        started_at=started,
        finished_at=finished,
    )
    try:
        outbox.finish_sync(outcome, code, body)
    except DatabaseUnavailable:
        # The mail went (or failed) already; the answer stands. The row stays in
        # `sending` until its lease expires and is then marked failed.
        logger.error("could not record the outcome of %s", message_id)
    return code, body

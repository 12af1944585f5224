"""Prometheus metrics (prometheus-client), one registry per app.

A registry per `create_app()` rather than the library's global one, so that
tests can build several apps in one process without "duplicated timeseries".
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# Delivery over a persistent connection to a local relay takes well under a
# millisecond; to a remote relay tens of ms; with retries inside /send, seconds.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.accepted = Counter(
            "mail_accepted",
            "Messages accepted, by endpoint (send: synchronous; send_async, send_batch: queued).",
            ["endpoint"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "mail_rejected",
            "Send requests refused before anything was stored, by reason "
            "(queue_full, database_unavailable, shutting_down, rate_limited).",
            ["reason"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "mail_delivery_attempts",
            "Delivery attempts by outcome (sent, retried, failed) and SMTP reply code "
            "('none' for network and TLS errors).",
            ["mode", "outcome", "code"],
            registry=self.registry,
        )
        self.delivery_seconds = Histogram(
            "mail_delivery_seconds",
            "Time of one delivery attempt over SMTP.",
            ["mode"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by route and status code.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._request_series: dict[tuple[str, str, int], Histogram] = {}
        self.queue_depth = Gauge(
            "mail_queue_depth",
            "Message ids waiting in this instance's in-memory queue.",
            registry=self.registry,
        )
        self.backlog = Gauge(
            "mail_backlog",
            "Accepted and unfinished async messages counted against QUEUE_MAXSIZE.",
            registry=self.registry,
        )
        self.oldest_queued_age = Gauge(
            "mail_oldest_queued_age_seconds",
            "Age of the oldest message still queued (0 when none).",
            registry=self.registry,
        )

        self.connections_open = Gauge(
            "mail_delivery_connections",
            "SMTP connections the delivery threads hold open to the relay.",
            registry=self.registry,
        )
        self.concurrency_limit = Gauge(
            "mail_delivery_concurrency_limit",
            "Connections the relay may get now (adapts between 1 and WORKER_CONCURRENCY).",
            registry=self.registry,
        )

        self.webhook_events = Counter(
            "mail_webhook_events",
            "Webhook calls by outcome: delivered (2xx), failed (to be retried), dropped "
            "(older than WEBHOOK_MAX_AGE, given up).",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_seconds = Histogram(
            "mail_webhook_seconds",
            "Time of one webhook call, until the receiver answered or the call failed.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.webhook_pending = Gauge(
            "mail_webhook_events_pending",
            "Events stored and not yet delivered to the webhook receiver.",
            registry=self.registry,
        )
        self.bounces = Counter(
            "mail_bounces",
            "Mail taken by the bounce listener, by what became of it: recorded (a "
            "record marked bounced), delayed (a delay notice), unknown (no such record), "
            "unrecognised (no failed recipient found in it).",
            ["result"],
            registry=self.registry,
        )

    def bind_gauges(
        self,
        *,
        queue_depth: Callable[[], float],
        backlog: Callable[[], float],
        oldest_queued_age: Callable[[], float | None],
        connections_open: Callable[[], float],
        concurrency_limit: Callable[[], float],
    ) -> None:
        """Gauges are read when scraped, so they cost nothing on the hot path."""
        self.connections_open.set_function(connections_open)
        self.concurrency_limit.set_function(concurrency_limit)
        self.queue_depth.set_function(queue_depth)
        self.backlog.set_function(backlog)
        self.oldest_queued_age.set_function(lambda: oldest_queued_age() or 0.0)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        series = self._request_series.get(key)
        if series is None:
            # labels() takes a lock and builds the key each time; this is per request.
            # The set stays small: route templates (never raw paths) x methods x codes.
            series = self._request_series[key] = self.request_seconds.labels(
                method, route, str(status)
            )
        series.observe(seconds)

    def record_delivery(self, mode: str, outcome: str, code: int | None, seconds: float) -> None:
        self.deliveries.labels(mode, outcome, str(code) if code is not None else "none").inc()
        self.delivery_seconds.labels(mode).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

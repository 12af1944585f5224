"""Locust users for the mail service: mostly /send_async, some /send.

Run against staging:

    MAIL_API_KEY=... locust -f loadtests/locustfile.py --host https://mail.staging.example

Under overload a 503 with Retry-After is the service shedding load as
designed: it is counted apart (the "shed" line of the summary) and is not a
failure. A 503 without Retry-After, any 5xx on /send_async, a timeout, or a
2xx with the wrong body is a failure.

At the end each worker process writes its tallies to $MAIL_LOAD_TALLY (when
set) so that `loadtests/run_scenarios.py` can check that the relay received
exactly the messages that were answered 202 or 200.
"""

from __future__ import annotations

import json
import os
import random
import threading
from typing import Any

from locust import FastHttpUser, between, events, task

API_KEY = os.environ.get("MAIL_API_KEY", "")
# Share of /send among requests; /send blocks on the relay, so keep it small.
SYNC_SHARE = float(os.environ.get("MAIL_SYNC_SHARE", "0.05"))
RECIPIENT_DOMAIN = os.environ.get("MAIL_RECIPIENT_DOMAIN", "example.com")

_tally_lock = threading.Lock()
tally: dict[str, Any] = {"accepted": 0, "sent": 0, "shed": 0, "message_ids": []}


def _count(kind: str, message_id: str | None = None) -> None:
    with _tally_lock:
        tally[kind] += 1
        if message_id is not None:
            tally["message_ids"].append(message_id)


def _valid_retry_after(headers: Any) -> bool:
    """Retry-After as delay-seconds (RFC 9110 10.2.3), what the service sends: 1 or more."""
    value = headers.get("Retry-After") or ""
    return value.isdigit() and int(value) >= 1


class MailUser(FastHttpUser):  # type: ignore[misc]  # locust ships no type hints
    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        self.headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}

    def _payload(self) -> str:
        n = random.randrange(1_000_000)
        return json.dumps(
            {
                "to": [f"user{n}@{RECIPIENT_DOMAIN}"],
                "subject": f"load test {n}",
                "body": "Hello from locust.\n" * 5,
            }
        )

    @task
    def send(self) -> None:
        if random.random() < SYNC_SHARE:
            self._send_sync()
        else:
            self._send_async()

    def _send_async(self) -> None:
        with self.client.post(
            "/send_async", data=self._payload(), headers=self.headers, catch_response=True
        ) as response:
            if response.status_code == 202:
                body = response.json()
                if body.get("status") != "queued" or not body.get("message_id"):
                    response.failure(f"202 with an unexpected body: {response.text[:200]}")
                    return
                _count("accepted", body["message_id"])
                response.success()
            elif response.status_code == 503 and _valid_retry_after(response.headers):
                _count("shed")
                response.success()  # load shed as designed, counted apart
            elif response.status_code == 503:
                retry_after = response.headers.get("Retry-After")
                response.failure(f"503 without a valid Retry-After: {retry_after!r}")
            else:
                response.failure(f"unexpected {response.status_code}: {response.text[:200]}")

    def _send_sync(self) -> None:
        with self.client.post(
            "/send", data=self._payload(), headers=self.headers, catch_response=True
        ) as response:
            if response.status_code == 200 and response.json().get("status") == "sent":
                _count("sent", response.json()["message_id"])
                response.success()
            else:
                response.failure(f"/send answered {response.status_code}: {response.text[:200]}")


@events.quitting.add_listener
def _write_tally(environment: Any, **_: Any) -> None:
    path = os.environ.get("MAIL_LOAD_TALLY")
    print(
        f"mail tally: accepted(202)={tally['accepted']} sent(200)={tally['sent']} "
        f"shed(503)={tally['shed']}"
    )
    if path:
        with open(path, "w") as out:
            json.dump(tally, out)

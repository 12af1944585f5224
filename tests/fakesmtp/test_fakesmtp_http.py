"""The HTTP JSON API, served by the same background thread (the page: test_web_*.py)."""

from __future__ import annotations

import smtplib

import httpx
import pytest

from fakesmtp import FakeSMTPServer
from tests.fakesmtp.helpers import make_message

pytestmark = pytest.mark.unit


def send(server: FakeSMTPServer, *subjects: str) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        for subject in subjects:
            client.sendmail(
                "s@example.com", ["r@example.com"], make_message(subject, html="<b>x</b>")
            )


def test_http_url_is_none_without_an_http_port(fakesmtp: FakeSMTPServer) -> None:
    assert fakesmtp.http_port is None
    assert fakesmtp.http_url is None


def test_health(http: httpx.Client) -> None:
    response = http.get("/api/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_messages_are_listed_newest_first_with_summaries(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    send(server, "first", "second")
    body = http.get("/api/messages").json()
    assert body["total"] == 2
    assert [m["subject"] for m in body["messages"]] == ["second", "first"]
    summary = body["messages"][0]
    assert set(summary) == {
        "id", "mail_from", "rcpt_tos", "subject", "message_id", "received_at", "size", "tls",
        "auth_user",
    }  # fmt: skip
    assert summary["mail_from"] == "s@example.com"
    assert summary["rcpt_tos"] == ["r@example.com"]
    assert summary["message_id"] == "<second@example.com>"
    assert summary["tls"] is False
    paged = http.get("/api/messages", params={"limit": 1, "offset": 1}).json()
    assert paged["total"] == 2
    assert [m["subject"] for m in paged["messages"]] == ["first"]
    assert http.get("/api/messages", params={"limit": "-1"}).status_code == 400


def test_one_message_has_headers_text_html_and_raw(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    send(server, "detail")
    message_id = server.messages()[0].id
    body = http.get(f"/api/messages/{message_id}").json()
    assert body["id"] == message_id
    assert ["Subject", "detail"] in body["headers"]
    assert body["text"] == "plain body\n"
    assert body["html"] == "<b>x</b>\n"
    assert "Subject: detail" in body["raw"]
    raw = http.get(f"/api/messages/{message_id}/raw")
    assert raw.headers["content-type"].startswith("message/rfc822")
    assert raw.content == server.messages()[0].raw


def test_unknown_message_is_404(http: httpx.Client) -> None:
    assert http.get("/api/messages/999").status_code == 404
    assert http.get("/api/messages/999/raw").status_code == 404


def test_delete_messages_forgets_them(server: FakeSMTPServer, http: httpx.Client) -> None:
    send(server, "gone")
    assert http.delete("/api/messages").status_code == 204
    assert http.get("/api/messages").json() == {"total": 0, "messages": []}


def test_faults_can_be_added_listed_and_removed_over_http(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    response = http.post(
        "/api/faults",
        json={"stage": "rcpt", "action": "reply", "code": 451, "message": "4.7.1 later"},
    )
    assert response.status_code == 201
    rule = response.json()
    assert rule["stage"] == "rcpt"
    assert rule["code"] == 451
    assert rule["id"]
    assert http.get(f"/api/faults/{rule['id']}").json()["code"] == 451
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.ehlo()
        client.mail("s@example.com")
        assert client.rcpt("r@example.com") == (451, b"4.7.1 later")
    listed = http.get("/api/faults").json()["faults"]
    assert [(f["id"], f["fired"]) for f in listed] == [(rule["id"], 1)]
    assert http.delete(f"/api/faults/{rule['id']}").status_code == 204
    assert http.delete(f"/api/faults/{rule['id']}").status_code == 404
    assert http.get(f"/api/faults/{rule['id']}").status_code == 404
    http.post("/api/faults", json={"stage": "mail", "action": "disconnect"})
    http.post("/api/faults", json={"stage": "data", "action": "delay", "delay": 1})
    assert http.delete("/api/faults").status_code == 204
    assert http.get("/api/faults").json() == {"faults": []}


@pytest.mark.parametrize(
    "body",
    [
        {"stage": "nowhere", "code": 451},
        {"stage": "rcpt", "action": "reply"},
        {"stage": "rcpt", "code": "451"},
        {"stage": "rcpt", "code": 451, "probability": 2},
        {"stage": "rcpt", "code": 451, "unknown": True},
        ["not", "an", "object"],
    ],
)
def test_invalid_fault_rules_are_422(http: httpx.Client, body: object) -> None:
    response = http.post("/api/faults", json=body)
    assert response.status_code == 422
    assert "detail" in response.json()
    assert http.get("/api/faults").json() == {"faults": []}


def test_fault_body_that_is_not_json_is_400(http: httpx.Client) -> None:
    response = http.post(
        "/api/faults", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


def test_stats_count_connections_messages_and_replies(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    send(server, "a", "b")
    stats = http.get("/api/stats").json()
    assert stats["connections"] == 1
    assert stats["messages"] == 2
    assert stats["replies"]["220"] == 1
    assert stats["replies"]["354"] == 2


def test_unknown_path_is_404(http: httpx.Client) -> None:
    assert http.get("/api/nothing").status_code == 404

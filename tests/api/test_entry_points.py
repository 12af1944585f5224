"""`python -m service` (serve, migrate), its logging, and `python -m service.devserver`,
as real processes."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fakesmtp import FakeSMTPServer
from service.main import MessageIdFormatter

pytestmark = pytest.mark.e2e

KEY = "entry-point-key-0123"


def python_m(module: str, *args: str) -> list[str]:
    """`python -m module`, measured by coverage when the test session is (nox -s tests)."""
    if os.environ.get("COVERAGE_PROCESS_START"):
        return [sys.executable, "-m", "coverage", "run", "-m", module, *args]
    return [sys.executable, "-m", module, *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "API_KEY": KEY,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'mail.db'}",
        "LOG_LEVEL": "INFO",
        **extra,
    }


def wait_for_health(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited early with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("no /health answer")


def test_formatter_appends_the_message_id_when_present() -> None:
    formatter = MessageIdFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "sent %s", ("a",), None)
    assert formatter.format(record) == "INFO sent a"
    record.message_id = "<m1@host>"
    assert formatter.format(record) == "INFO sent a message_id=<m1@host>"


def test_missing_api_key_stops_start_up_with_one_line(tmp_path: Path) -> None:
    env = service_env(tmp_path)
    del env["API_KEY"]
    result = subprocess.run(
        python_m("service"), env=env, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert "API_KEY" in lines[0]


def test_migrate_creates_the_schema_and_exits(tmp_path: Path) -> None:
    result = subprocess.run(
        python_m("service", "migrate"),
        env=service_env(tmp_path),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    with sqlite3.connect(tmp_path / "mail.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "messages" in tables


def test_serve_answers_then_exits_0_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    with FakeSMTPServer(port=0) as relay:
        env = service_env(
            tmp_path,
            PORT=str(port),
            SMTP_HOST=relay.host,
            SMTP_PORT=str(relay.port),
            SHUTDOWN_GRACE_SECONDS="2",
        )
        log = (tmp_path / "service.log").open("wb")
        proc = subprocess.Popen(python_m("service"), env=env, stdout=log, stderr=log)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_health(url, proc)
            sent = httpx.post(
                f"{url}/send",
                json={"to": "ana@example.com", "body": "hi"},
                headers={"X-API-Key": KEY},
                timeout=30,
            )
            assert sent.status_code == 200
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
            assert time.monotonic() - started < 6
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    output = (tmp_path / "service.log").read_text()
    assert "Traceback" not in output
    assert KEY not in output


def test_devserver_prints_a_working_curl_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        python_m(
            "service.devserver",
            "--port=0",
            "--smtp-port=0",
            "--http-port=0",
            f"--database={tmp_path / 'dev.db'}",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        banner = ""
        while "Ctrl-C" not in banner:
            line = proc.stdout.readline().decode()
            assert line, f"devserver exited: {banner}"
            banner += line
        url = re.search(r"mail service\s+(http://\S+)", banner)
        key = re.search(r"API key\s+(\S+)", banner)
        fake = re.search(r"captured mail: (http://\S+)", banner)
        assert url
        assert key
        assert fake
        assert "curl" in banner
        wait_for_health(url.group(1), proc)
        sent = httpx.post(
            f"{url.group(1)}/send",
            json={"to": "you@example.com", "subject": "dev", "body": "hi"},
            headers={"X-API-Key": key.group(1)},
            timeout=30,
        )
        assert sent.status_code == 200, sent.text
        captured = httpx.get(fake.group(1).rstrip("/") + "/api/messages", timeout=10).json()
        assert captured["total"] == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

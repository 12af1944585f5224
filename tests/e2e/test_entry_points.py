"""`python -m service` (serve, migrate) and `python -m service.devserver`, as real
processes."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fakesmtp import FakeSMTPServer
from service import migrations
from tests.e2e.helpers import free_port, python_m, wait_for_health
from tests.migrations.helpers import assert_migrated_to_head

pytestmark = pytest.mark.e2e

KEY = "entry-point-key-0123"
ROOT = Path(__file__).resolve().parents[2]


def service_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "API_KEY": KEY,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'mail.db'}",
        "LOG_LEVEL": "INFO",
        **extra,
    }


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


def test_mail_service_migrate_command(database_url: str) -> None:
    """`python -m service migrate` brings the database to head and exits 0."""
    env = {**os.environ, "API_KEY": "k", "DATABASE_URL": database_url}
    done = subprocess.run(
        [sys.executable, "-m", "service", "migrate"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"revision {migrations.head_revision()}" in done.stderr
    assert_migrated_to_head(database_url)

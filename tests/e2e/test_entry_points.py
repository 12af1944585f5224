"""`python -m service` (serve, migrate) and `mail-service`, as real
processes."""

from __future__ import annotations

import os
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


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_serve_answers_then_exits_0_on_sigterm_or_sighup(
    tmp_path: Path, stop: signal.Signals
) -> None:
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
            proc.send_signal(stop)
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
    assert "Application shutdown complete" in output  # the graceful path, not a kill


def test_a_taken_port_is_one_line_naming_it_and_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            python_m("service"),
            env=service_env(tmp_path, PORT=str(port), HOST="127.0.0.1"),
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines() == [
        f"mail-service: port {port} on 127.0.0.1 is in use (another process listens "
        "there): stop it, or choose another port with PORT"
    ]
    assert not (tmp_path / "mail.db").exists()  # nothing started before the bind


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

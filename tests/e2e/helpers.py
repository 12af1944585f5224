"""Real processes: `python -m <module>` (measured by coverage when the session is),
and `python -m service` on a free port, waited for until it answers /health."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx
import sqlalchemy as sa

from fakesmtp import CapturedMessage, FakeSMTPServer

API_KEY = "e2e-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def python_m(module: str, *args: str) -> list[str]:
    """`python -m module`, measured by coverage when the test session is (nox -s tests;
    parallel=true gives each process its own data file)."""
    if os.environ.get("COVERAGE_PROCESS_START"):
        return [sys.executable, "-m", "coverage", "run", "-m", module, *args]
    return [sys.executable, "-m", module, *args]


def wait_for_health(
    url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0, log: Path | None = None
) -> None:
    """Poll `url`/health until it answers 200; fail (with the process's log, if it has
    one) when the process exits first or `timeout` passes."""

    def output() -> str:
        return f":\n{log.read_text()}" if log is not None else ""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited early with {proc.returncode}{output()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"no /health answer{output()}")


class ServiceProcess:
    """One `python -m service` process; its output goes to a log file for post-mortems."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        # A restart on the same port keeps the default INSTANCE_ID (host:port).
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            **os.environ,
            "API_KEY": API_KEY,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "INFO",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(python_m("service"), env=self.env, stdout=log, stderr=log)
        wait_for_health(self.url, self.proc, timeout, log=self.log_path)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": API_KEY}, timeout=30)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took to exit)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def statuses(database: str) -> collections.Counter[str]:
    """How many messages are in each status, read from outside the service."""
    engine = sa.create_engine(database, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT status, count(*) FROM messages GROUP BY status"))
            return collections.Counter({status: int(count) for status, count in rows})
    finally:
        engine.dispose()


def still_missing(
    smtp: FakeSMTPServer,
    wanted: set[str],
    keys: Callable[[CapturedMessage], Iterable[str]],
    timeout: float,
) -> set[str]:
    """Wait on the relay's event stream until each of ``wanted`` is one of ``keys(m)``
    for some captured message m (a Message-ID, a recipient); what never came within
    ``timeout``, or an empty set. No polling: a message is seen as it is stored."""
    missing = set(wanted)

    def the_last_one(message: CapturedMessage) -> bool:
        missing.difference_update(keys(message))
        return not missing

    if missing:
        with contextlib.suppress(TimeoutError):
            smtp.wait_for(the_last_one, timeout=timeout)
    return missing

"""Processes the benchmarks and load scenarios start: fakesmtp, the service, a sink.

Each is a real subprocess on free ports of 127.0.0.1 (never a fixed port), with its
output in a log file for post-mortems, stopped in `finally` by its context manager.
Also: the machine's load average and the peak RSS of a process tree from /proc.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

REPO = Path(__file__).resolve().parents[1]
_FAKESMTP_LINE = re.compile(
    r"fakesmtp SMTP on (?P<host>[\d.]+):(?P<port>\d+) HTTP (?:on http://[\d.]+:(?P<http>\d+)|off)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    tree = [pid]
    for child in _children(pid):
        tree += process_tree(child)
    return tree


def memory_kib(pid: int, field: str) -> int:
    """A /proc/<pid>/status field in KiB, e.g. VmHWM (peak RSS) or VmRSS; 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def tree_memory_kib(pid: int, field: str) -> int:
    """Sum of `field` over a process and its descendants (each one's own peak for VmHWM)."""
    return sum(memory_kib(p, field) for p in process_tree(pid))


class LoggedProcess:
    """A subprocess whose stdout/stderr go to a log file; stop() in every case."""

    def __init__(self, name: str, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _spawn(self, command: Sequence[str], env: dict[str, str], **kwargs: Any) -> None:
        self._log = self.log_path.open("ab")
        kwargs.setdefault("stdout", self._log)
        self.proc = subprocess.Popen(list(command), env=env, stderr=self._log, **kwargs)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


# fakesmtp holding every connection in its greeting: the delivery threads wait in
# connect, so no delivery work competes with what a benchmark measures.
BLOCKED_RELAY_ARGS = ["--fault", "connect:delay:3600", "--http-port", "0"]


class FakeSMTP(LoggedProcess):
    """`python -m fakesmtp --port 0 --http-port auto ...`; learns its ports from its one line."""

    def __init__(self, log_dir: Path, args: Sequence[str] = (), name: str = "fakesmtp") -> None:
        super().__init__(name, log_dir)
        self.args = list(args)
        self.host = "127.0.0.1"
        self.port = 0
        self.http_url: str | None = None

    def relay_env(self) -> dict[str, str]:
        """A service's settings to deliver here, waiting as long as this relay holds it."""
        return {"SMTP_HOST": self.host, "SMTP_PORT": str(self.port), "SMTP_TIMEOUT": "3600"}

    def start(self, timeout: float = 20.0) -> FakeSMTP:
        command = [sys.executable, "-m", "fakesmtp", "--port", "0", "--http-port", "auto"]
        self._spawn([*command, *self.args], dict(os.environ), stdout=subprocess.PIPE)
        assert self.proc is not None
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        # The line comes once it listens; a dead process gives EOF instead.
        line = self.proc.stdout.readline().decode(errors="replace")
        match = _FAKESMTP_LINE.search(line)
        if match is None or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"fakesmtp did not start: {line!r}\n{self.log_tail()}")
        self.host, self.port = match["host"], int(match["port"])
        if match["http"]:
            self.http_url = f"http://{self.host}:{match['http']}"
        return self

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self.http_url is not None, "started with the HTTP API off"
        response = httpx.request(method, self.http_url + path, timeout=60, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.api("GET", "/api/stats")
        return stats

    def summaries(self) -> list[dict[str, Any]]:
        """Every captured message's summary (newest first)."""
        body = self.api("GET", "/api/messages")
        messages: list[dict[str, Any]] = body["messages"]
        return messages

    def stop(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        super().stop()

    def __enter__(self) -> FakeSMTP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Service(LoggedProcess):
    """`python -m service` on a free port, SQLite in `db_path`, a generated API key.

    `python` is the interpreter that runs it (this one by default); another
    checkout's virtualenv runs that checkout's service (bench/revisions.py)."""

    def __init__(
        self,
        log_dir: Path,
        db_path: Path,
        env: dict[str, str],
        *,
        api_key: str | None = None,
        name: str = "service",
        python: str = sys.executable,
    ) -> None:
        super().__init__(name, log_dir)
        self.python = python
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.db_path = db_path
        self.env = {
            **os.environ,
            "API_KEY": self.api_key,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "DATABASE_URL": f"sqlite:///{db_path}",
            "LOG_LEVEL": "WARNING",
            **env,
        }

    def start(self, timeout: float = 30.0, *, wait: bool = True) -> Service:
        self._spawn([self.python, "-m", "service"], self.env)
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not answer /health:\n{self.log_tail()}")

    def metric(self, name: str) -> float:
        """One unlabelled sample (or the sum over labels) from /metrics."""
        text = httpx.get(self.url + "/metrics", timeout=30).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@contextlib.contextmanager
def stopping(*processes: LoggedProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for process in reversed(processes):
            process.stop()


class Sink(LoggedProcess):
    """bench/sink.py: a bare aiosmtpd sink in its own process (see its docstring)."""

    def __init__(self, log_dir: Path, expect: int, name: str = "sink") -> None:
        super().__init__(name, log_dir)
        self.expect = expect
        self.port = 0

    def start(self) -> Sink:
        command = [sys.executable, str(REPO / "bench" / "sink.py"), "--expect", str(self.expect)]
        self._spawn(command, dict(os.environ), stdout=subprocess.PIPE)
        line = self._readline(30.0)
        if not line.startswith("sink on "):
            self.stop()
            raise RuntimeError(f"sink did not start: {line!r}\n{self.log_tail()}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def _readline(self, timeout: float) -> str:
        assert self.proc is not None
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return ""
        return self.proc.stdout.readline().decode(errors="replace").strip()

    def wait_done(self, timeout: float) -> tuple[float, float]:
        """Wall-clock times of the first and the --expect'th message."""
        line = self._readline(timeout)
        if not line.startswith("done "):
            raise TimeoutError(f"sink: {self.expect} messages not received: {line!r}")
        _, first, last, _ = line.split()
        return float(first), float(last)

    def total(self) -> int:
        """SIGTERM it and return how many messages it received in all."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        for _ in range(3):
            line = self._readline(10.0)
            if line.startswith("total "):
                self.proc.wait(10)
                return int(line.split()[1])
        raise RuntimeError("sink gave no total")

    def stop(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        super().stop()

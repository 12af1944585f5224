"""`python -m service.devserver` (`nox -s dev`) as a newcomer meets it: the banner's
key is the README's, the console stays quiet, every way of stopping it stops both
servers, and a taken port is one line."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.devserver import DEV_API_KEY
from tests.e2e.helpers import python_m, wait_for_health

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Dev:
    proc: subprocess.Popen[bytes]
    output: Path
    url: str
    key: str
    fake: str
    smtp_port: int

    def console(self) -> str:
        return self.output.read_text()


def dev_args(tmp_path: Path, *extra: str) -> list[str]:
    return python_m(
        "service.devserver",
        "--port=0",
        "--smtp-port=0",
        "--http-port=0",
        f"--database={tmp_path / 'dev.db'}",
        *extra,
    )


def read_banner(output: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = output.read_text()
        if "Ctrl-C stops both" in text:
            return text
        assert proc.poll() is None, f"devserver exited:\n{text}"
        time.sleep(0.05)
    raise AssertionError(f"no banner within {timeout}s:\n{output.read_text()}")


@contextmanager
def devserver(tmp_path: Path, *extra: str) -> Iterator[Dev]:
    output = tmp_path / "console.log"
    with output.open("wb") as sink:
        proc = subprocess.Popen(dev_args(tmp_path, *extra), stdout=sink, stderr=subprocess.STDOUT)
    try:
        banner = read_banner(output, proc)
        url = re.search(r"mail service\s+(http://\S+)", banner)
        key = re.search(r"export KEY=(\S+)", banner)
        fake = re.search(r"captured mail: (http://\S+)/", banner)
        smtp = re.search(r"smtp://[\d.]+:(\d+)", banner)
        assert url, banner
        assert key, banner
        assert fake, banner
        assert smtp, banner
        wait_for_health(url.group(1), proc)
        yield Dev(proc, output, url.group(1), key.group(1), fake.group(1), int(smtp.group(1)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def send(dev: Dev, n: int) -> None:
    answer = httpx.post(
        f"{dev.url}/send",
        json={"to": f"you{n}@example.com", "subject": f"dev {n}", "body": "hi"},
        headers={"X-API-Key": dev.key},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text


def test_the_banner_comes_after_start_up_with_the_readmes_key_and_a_curl_that_works(
    tmp_path: Path,
) -> None:
    with devserver(tmp_path) as dev:
        console = dev.console()
        assert dev.key == DEV_API_KEY
        # The README's examples export this very key.
        assert f"export KEY={DEV_API_KEY}" in (ROOT / "README.md").read_text()
        # Printed once requests are taken, not lost above the start-up's lines.
        assert console.index("Application startup complete") < console.index("export KEY=")
        curl = re.search(r"try:\s+(curl .*)", console)
        assert curl
        ran = subprocess.run(
            ["bash", "-c", curl.group(1)],
            env={"KEY": dev.key, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert ran.returncode == 0, ran.stderr
        assert '"status":"sent"' in ran.stdout.decode()
        captured = httpx.get(f"{dev.fake}/api/messages", timeout=10).json()
        assert captured["total"] == 1
        dev.proc.send_signal(signal.SIGINT)
        assert dev.proc.wait(15) == 0


def test_the_console_shows_one_line_per_message_and_verbose_shows_more(
    tmp_path: Path,
) -> None:
    with devserver(tmp_path) as dev:
        before = len(dev.console().splitlines())
        for n in range(5):
            send(dev, n)
        dev.proc.send_signal(signal.SIGTERM)
        assert dev.proc.wait(15) == 0
        lines = dev.console().splitlines()[before:]
    captured = [line for line in lines if "captured #" in line]
    assert len(captured) == 5, lines
    assert "you0@example.com" in captured[0]
    # Nothing else per message: the stop's own few lines only.
    assert len(lines) < 5 + 8, lines
    (tmp_path / "verbose").mkdir()
    with devserver(tmp_path / "verbose", "--verbose") as dev:
        before = len(dev.console().splitlines())
        send(dev, 0)
        dev.proc.send_signal(signal.SIGTERM)
        assert dev.proc.wait(15) == 0
        assert "mail.log" in "\n".join(dev.console().splitlines()[before:])


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_stops_both_servers_and_frees_their_ports(
    tmp_path: Path, stop: signal.Signals
) -> None:
    with devserver(tmp_path) as dev:
        dev.proc.send_signal(stop)
        assert dev.proc.wait(15) == 0
        assert_free(dev)


def test_with_stop_with_parent_the_death_of_its_parent_stops_it(tmp_path: Path) -> None:
    """As `nox -s dev` killed by its PID: nox does not pass the signal on."""
    output = tmp_path / "console.log"
    starter = (
        "import subprocess, sys, time\n"
        f"sink = open({str(output)!r}, 'wb')\n"
        f"child = subprocess.Popen({dev_args(tmp_path, '--stop-with-parent')!r}, "
        "stdout=sink, stderr=subprocess.STDOUT)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    read_banner(output, parent)
    parent.kill()  # SIGKILL: the parent cannot forward anything
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and pid_alive(child_pid):
        time.sleep(0.1)
    assert not pid_alive(child_pid), "the devserver outlived its parent"
    assert "Application shutdown complete" in output.read_text()  # a graceful stop


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def assert_free(dev: Dev) -> None:
    for port in (int(dev.url.rsplit(":", 1)[1]), dev.smtp_port):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", dev.smtp_port), timeout=2).close()


@pytest.mark.parametrize("option", ["--port", "--smtp-port", "--http-port"])
def test_a_taken_port_is_one_line_naming_it_and_its_option(tmp_path: Path, option: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*dev_args(tmp_path), f"{option}={port}"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines() == [
        f"devserver: port {port} on 127.0.0.1 is in use (another process listens there): "
        f"stop it, or choose another port with {option}"
    ]

"""Postfix's programs as benchmark parts: smtp-sink as the sink, a private Postfix as a sender.

Debian's `postfix` package brings both (/usr/sbin/smtp-sink, /usr/sbin/postfix):

    echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postfix

("No configuration": no system main.cf, no system instance is started; nothing here
touches /etc/postfix or the system queue.)

SmtpSink: `smtp-sink -c` on a free port of 127.0.0.1. It is C, answers every command
at once, offers PIPELINING, and keeps nothing, so it is not what bounds a Python
client. With -c it writes `sess=N quit=N mesg=N` (CR-terminated) whenever a message's
final dot arrives; a thread here stamps each new count with the wall clock, so a
measurement is a window of the count: `mark()` before, `wait_for(mark, n)` after
gives the times of the window's first and n'th message.

PostfixInstance: a private Postfix (its own config_directory, queue_directory and
data_directory in a directory given to it; smtpd on a free port of 127.0.0.1; logs
to a file via postlogd, no syslog) that relays everything to one relayhost.
`defer_transports = smtp` keeps what is injected queued (deferred); `flush()` is
`postqueue -f`, which delivers the deferred mail in spite of defer_transports: a
backlog drained, as the service drains its outbox. Needs root (Postfix's daemons
run as the `postfix` user, the instance is started with `postfix -c DIR start`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procs import LoggedProcess, free_port

SMTP_SINK = "/usr/sbin/smtp-sink"
POSTFIX = "/usr/sbin/postfix"
POSTQUEUE = "/usr/sbin/postqueue"
INSTALL_HINT = (
    "needs Debian's postfix package: echo 'postfix postfix/main_mailer_type select "
    "No configuration' | debconf-set-selections && apt-get update && "
    "DEBIAN_FRONTEND=noninteractive apt-get install -y postfix"
)
_COUNTS = re.compile(rb"mesg=(\d+)")


def missing(*programs: str) -> str | None:
    """One line saying what to install when any of `programs` is absent, else None."""
    absent = [p for p in programs if not os.access(p, os.X_OK)]
    if absent:
        return f"{', '.join(absent)} not found: {INSTALL_HINT}"
    return None


def wait_listening(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class SmtpSink(LoggedProcess):
    """`smtp-sink -c [-u nobody] [options] 127.0.0.1:PORT BACKLOG`, its counts followed."""

    def __init__(
        self,
        log_dir: Path,
        options: Sequence[str] = (),
        *,
        port: int = 0,
        backlog: int = 1000,
        name: str = "smtp-sink",
    ) -> None:
        super().__init__(name, log_dir)
        self.options = list(options)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.backlog = backlog
        self.count = 0
        self._times: list[float] = [0.0]  # _times[k]: when the k'th message had arrived
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None

    @property
    def command(self) -> list[str]:
        user = ["-u", "nobody"] if os.geteuid() == 0 else []  # required as root
        return [
            SMTP_SINK,
            "-c",
            *user,
            *self.options,
            f"{self.host}:{self.port}",
            str(self.backlog),
        ]

    def start(self, timeout: float = 10.0) -> SmtpSink:
        problem = missing(SMTP_SINK)
        if problem:
            raise RuntimeError(problem)
        self._spawn(self.command, dict(os.environ), stdout=subprocess.PIPE)
        self._reader = threading.Thread(target=self._follow, name=self.name, daemon=True)
        self._reader.start()
        try:
            wait_listening(self.host, self.port, timeout)  # one session, no message
        except OSError as exc:
            self.stop()
            raise RuntimeError(f"smtp-sink did not listen: {exc}\n{self.log_tail()}") from exc
        return self

    def _follow(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            now = time.time()
            *records, pending = (pending + chunk).split(b"\r")
            counts = [int(m[1]) for r in records if (m := _COUNTS.search(r))]
            if not counts:
                continue
            count = max(counts)
            with self._changed:
                if count > self.count:
                    self._times.extend([now] * (count - self.count))
                    self.count = count
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def mark(self) -> int:
        """The count now: the start of a measurement window."""
        with self._changed:
            return self.count

    def wait_for(self, mark: int, count: int, timeout: float) -> tuple[float, float]:
        """Wall-clock times of the window's first and `count`'th message after `mark`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.count < mark + count:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc is None or self.proc.poll() is not None:
                    raise TimeoutError(
                        f"smtp-sink: {self.count - mark} of {count} messages received"
                    )
                self._changed.wait(min(left, 1.0))
            return self._times[mark + 1], self._times[mark + count]

    def settle(self, mark: int, count: int, quiet: float = 0.5) -> int:
        """Wait `quiet` seconds, then the window's size: more than `count` is an error."""
        time.sleep(quiet)
        received = self.mark() - mark
        if received != count:
            raise RuntimeError(f"smtp-sink: {received} messages in the window, not {count}")
        return received

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        super().stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CountingSink(SmtpSink):
    """An SmtpSink with bench/procs.Sink's face, for the drain benchmarks: it expects
    `expect` messages; wait_done() gives the times of the first and the last."""

    def __init__(self, log_dir: Path, expect: int, name: str = "smtp-sink") -> None:
        super().__init__(log_dir, name=name)
        self.expect = expect

    def wait_done(self, timeout: float) -> tuple[float, float]:
        return self.wait_for(0, self.expect, timeout)

    def total(self) -> int:
        """Every message received (after a short quiet spell), then stop."""
        time.sleep(0.5)
        received = self.mark()
        self.stop()
        return received


def drain_sink(log_dir: Path, expect: int, name: str) -> CountingSink:
    """The sink of the drain benchmarks, started: Postfix's smtp-sink, so that what
    is measured is the sender, not a Python sink as slow as it."""
    problem = missing(SMTP_SINK)
    if problem:
        raise SystemExit(problem)
    sink = CountingSink(log_dir, expect, name=name)
    sink.start()
    return sink


class PostfixInstance:
    """A private Postfix in `base` relaying to [relay_host]:relay_port; start() and stop()."""

    def __init__(
        self,
        base: Path,
        relay_host: str,
        relay_port: int,
        *,
        concurrency: int = 4,
        extra: dict[str, str] | None = None,
        log_copy: Path | None = None,
    ) -> None:
        self.base = base
        self.log_copy = log_copy  # where stop() copies its maillog (e.g. --keep)
        self.conf = base / "conf"
        self.queue = base / "queue"
        self.data = base / "data"
        self.maillog = base / "maillog"
        self.relay = f"[{relay_host}]:{relay_port}"
        self.concurrency = concurrency
        self.extra = extra or {}
        self.smtpd_port = free_port()
        self.started = False

    def settings(self) -> dict[str, str]:
        limit = str(self.concurrency)
        return {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix-bench.invalid",
            "mydomain": "invalid",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_transport": "error:local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "relayhost": self.relay,
            "smtp_dns_support_level": "disabled",
            # the connection cap, as WORKER_CONCURRENCY is the service's
            "default_destination_concurrency_limit": limit,
            "smtp_destination_concurrency_limit": limit,
            "initial_destination_concurrency": limit,
            # queued, not delivered, until postqueue -f
            "defer_transports": "smtp",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.base),
            "biff": "no",
            **self.extra,
        }

    def _master_cf(self) -> str:
        """Debian's master.cf with no chroot (the queue is private) and smtpd on our port."""
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if line[:1] not in ("#", " ", "\t") and len(fields) >= 8:
                if fields[0] == "smtp" and fields[1] == "inet":
                    fields[0] = f"127.0.0.1:{self.smtpd_port}"
                fields[4] = "n"  # chroot
                line = "  ".join(fields)
            lines.append(line)
        return "\n".join(lines) + "\n"

    def _run(self, *command: str, timeout: float = 60.0) -> str:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {done.returncode}: {done.stdout}{done.stderr}\n"
                f"{self.log_tail()}"
            )
        return done.stdout

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.maillog.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, timeout: float = 30.0) -> PostfixInstance:
        problem = missing(POSTFIX, POSTQUEUE)
        if problem:
            raise RuntimeError(problem)
        if os.geteuid() != 0:
            raise RuntimeError("a private Postfix instance needs root (its daemons run as postfix)")
        for directory in (self.conf, self.queue, self.data):
            directory.mkdir(parents=True, exist_ok=True)
        # the postfix user must reach its queue and data directories: open up (o+x) the
        # private temporary directories on the way, never anything outside the temp root
        root = Path(tempfile.gettempdir()).resolve()
        for directory in self.base.resolve().parents:
            if directory != root and root in directory.parents:
                directory.chmod(directory.stat().st_mode | 0o711)
        self.base.chmod(0o755)
        shutil.chown(self.data, "postfix")
        self.data.chmod(0o700)
        (self.conf / "main.cf").write_text(
            "".join(f"{key} = {value}\n" for key, value in self.settings().items())
        )
        (self.conf / "master.cf").write_text(self._master_cf())
        self._run(POSTFIX, "-c", str(self.conf), "check")
        self._run(POSTFIX, "-c", str(self.conf), "start")
        self.started = True
        try:
            wait_listening("127.0.0.1", self.smtpd_port, timeout)
        except OSError as exc:
            self.stop()
            raise RuntimeError(f"postfix smtpd did not listen:\n{self.log_tail()}") from exc
        return self

    def queued(self, *queues: str) -> int:
        """Queue files in the named queues (all of the mail queues by default)."""
        names = queues or ("maildrop", "incoming", "active", "deferred", "hold")
        return sum(1 for name in names for path in (self.queue / name).rglob("*") if path.is_file())

    def inject(self, messages: list[tuple[str, list[str], bytes]], threads: int = 4) -> None:
        """Hand `messages` to its smtpd (smtplib, persistent connections), then wait until
        every one is deferred (defer_transports): a backlog ready for flush()."""
        before = self.queued("deferred")
        chunks = [messages[n::threads] for n in range(threads)]
        errors: list[BaseException] = []

        def send(chunk: list[tuple[str, list[str], bytes]]) -> None:
            try:
                with smtplib.SMTP("127.0.0.1", self.smtpd_port, timeout=60) as client:
                    client.ehlo()
                    for sender, rcpts, raw in chunk:
                        client.sendmail(sender, rcpts, raw)
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=send, args=(chunk,)) for chunk in chunks]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if errors:
            raise errors[0]
        want = before + len(messages)
        deadline = time.monotonic() + 120
        while self.queued("deferred") < want or self.queued("incoming", "active", "maildrop"):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"postfix: {self.queued('deferred') - before} of {len(messages)} deferred"
                    f"\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def flush(self) -> None:
        """postqueue -f: deliver the deferred backlog now."""
        self._run(POSTQUEUE, "-c", str(self.conf), "-f")

    def wait_empty(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.queued():
            if time.monotonic() > deadline:
                raise TimeoutError(f"postfix: {self.queued()} still queued\n{self.log_tail()}")
            time.sleep(0.2)

    def sent_log_lines(self) -> int:
        try:
            return self.maillog.read_text(errors="replace").count("status=sent")
        except OSError:
            return 0

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        done = subprocess.run(
            [POSTFIX, "-c", str(self.conf), "stop"], capture_output=True, timeout=60, check=False
        )
        if done.returncode != 0:
            subprocess.run(
                [POSTFIX, "-c", str(self.conf), "abort"],
                capture_output=True,
                timeout=60,
                check=False,
            )
        pid_file = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + 15
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.log_copy is not None and self.maillog.exists():
            shutil.copyfile(self.maillog, self.log_copy)

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _selftest() -> int:
    """python bench/postfix.py: smtp-sink and a private Postfix, 100 messages through both."""
    problem = missing(SMTP_SINK, POSTFIX, POSTQUEUE)
    if problem:
        print(problem)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-postfix-") as tmp:
        base = Path(tmp)
        with SmtpSink(base) as sink, PostfixInstance(base / "pf", sink.host, sink.port) as pf:
            msg = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: t\r\n\r\nhello\r\n"
            pf.inject([("a@example.com", ["b@example.com"], msg)] * 100)
            mark = sink.mark()
            pf.flush()
            first, last = sink.wait_for(mark, 100, 60)
            pf.wait_empty(30)
            sink.settle(mark, 100)
            print(f"postfix -> smtp-sink: 100 messages in {last - first:.3f}s", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(_selftest())

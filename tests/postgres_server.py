"""The PostgreSQL server of the postgres tests: one per test process, started the first
time a test (or a script such as tests/e2e/chaos.py) asks for it.

By default a throwaway server from the installed binaries (Debian's `postgresql`
package): a cluster in a temporary directory, on a free port of 127.0.0.1, trust
auth, superuser `postgres`, database `test`, run as the `postgres` system user when we
are root (PostgreSQL refuses root). pytest-postgresql's PostgreSQLExecutor runs its
pg_ctl. It is stopped and its directory removed at the end: by the session
fixture in tests/conftest.py, else at exit.

- TEST_POSTGRES_BIN: the directory of the server binaries (pg_ctl, initdb), or pg_ctl
  itself. Otherwise pg_ctl on PATH, then in `pg_config --bindir`, then in the newest
  /usr/lib/postgresql/<version>/bin (Debian, Ubuntu) or /usr/pgsql-<version>/bin (the
  PostgreSQL project's RPMs).
- TEST_POSTGRES_URL: use this running server instead, e.g.
  `postgresql://postgres@127.0.0.1:5432/test`: a database the tests may create
  schemas in, as a user who may create databases. Nothing is started, and the test
  that restarts the server is skipped.

Without binaries (or with a TEST_POSTGRES_BIN holding none) the postgres tests fail
with one line saying what to install: never a silent skip.
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg
import sqlalchemy as sa
from mirakuru.exceptions import ExecutorError
from pytest_postgresql.exceptions import PostgreSQLUnsupported
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor

from tests.e2e.helpers import free_port

__all__ = [
    "BIN_VARIABLE",
    "URL_VARIABLE",
    "ExistingServer",
    "PostgresUnavailable",
    "Server",
    "ThrowawayServer",
    "find_pg_ctl",
    "shared",
    "stop_shared",
]

BIN_VARIABLE = "TEST_POSTGRES_BIN"
URL_VARIABLE = "TEST_POSTGRES_URL"
HOST = "127.0.0.1"  # the throwaway server listens here only


class PostgresUnavailable(Exception):
    """No server for the postgres tests; the message is one line saying what to do."""


# -- the binaries ----------------------------------------------------------------------


def _versioned(pattern: str) -> Iterator[Path]:
    """`pattern`'s matches, the highest version (the first number in the path) first."""

    def version(path: Path) -> int:
        found = re.search(r"\d+", str(path))
        return int(found.group()) if found else -1

    yield from sorted(Path("/").glob(pattern), key=version, reverse=True)


def _pg_config_bindir() -> Iterator[Path]:
    if (pg_config := shutil.which("pg_config")) is None:
        return
    try:
        answer = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return
    yield Path(answer.stdout.strip()) / "pg_ctl"


def _candidates() -> Iterator[Path]:
    if on_path := shutil.which("pg_ctl"):
        yield Path(on_path)
    # pg_config may come without the server (libpq-dev): its bindir is only a hint.
    yield from _pg_config_bindir()
    yield from _versioned("usr/lib/postgresql/*/bin/pg_ctl")
    yield from _versioned("usr/pgsql-*/bin/pg_ctl")


def _is_server(pg_ctl: Path) -> bool:
    """pg_ctl with initdb beside it (pg_ctl looks for it in its own real directory)."""
    return os.access(pg_ctl, os.X_OK) and os.access(pg_ctl.resolve().parent / "initdb", os.X_OK)


def find_pg_ctl(environ: Mapping[str, str] = os.environ) -> Path:
    """TEST_POSTGRES_BIN's pg_ctl, else the first one found (see the module's docstring)."""
    if named := environ.get(BIN_VARIABLE):
        path = Path(named)
        pg_ctl = path / "pg_ctl" if path.is_dir() else path
        if not _is_server(pg_ctl):
            raise PostgresUnavailable(
                f"{BIN_VARIABLE}={named} holds no pg_ctl and initdb: apt-get install "
                "postgresql, then point it at /usr/lib/postgresql/<version>/bin or unset it"
            )
        return pg_ctl
    for pg_ctl in _candidates():
        if _is_server(pg_ctl):
            return pg_ctl
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (pg_ctl, initdb) for the postgres tests: "
        f"apt-get install postgresql (or set {BIN_VARIABLE} to their directory, "
        f"or {URL_VARIABLE} to a running server)"
    )


# -- the servers -----------------------------------------------------------------------


def _owner() -> pwd.struct_passwd | None:
    """Who the server runs as when we cannot: initdb, pg_ctl and postgres refuse root
    (CI runs as root). None: as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):  # `postgres`: made by Debian's package
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable(
        "running as root, and there is no `postgres` or `nobody` user for the "
        "throwaway PostgreSQL to run as (initdb and postgres refuse root)"
    )


def _pg_ctl_as(owner: pwd.struct_passwd, pg_ctl: Path, directory: Path) -> Path:
    """A pg_ctl that becomes `owner` first: PostgreSQLExecutor runs every pg_ctl command
    (initdb, start, status, stop) as we are. setpriv is util-linux's, so in every
    Debian. The script is root's, in a directory of root's: the owner cannot change it."""
    if (setpriv := shutil.which("setpriv")) is None:
        raise PostgresUnavailable(
            "running as root, the throwaway PostgreSQL needs setpriv to run as "
            f"`{owner.pw_name}` (initdb and postgres refuse root): apt-get install util-linux"
        )
    script = directory / "pg_ctl"
    script.write_text(
        "#!/bin/sh\n"
        f"cd {shlex.quote(str(directory))} || exit 1\n"
        f"exec {shlex.quote(setpriv)} --reuid={owner.pw_uid} --regid={owner.pw_gid} "
        f'--clear-groups -- {shlex.quote(str(pg_ctl))} "$@"\n'
    )
    script.chmod(0o755)
    return script


# initdb or pg_ctl failing or missing, a timeout, a version below 14, `CREATE DATABASE`.
_START_ERRORS = (
    OSError,
    subprocess.SubprocessError,
    ExecutorError,
    PostgreSQLUnsupported,
    psycopg.Error,
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class ThrowawayServer:
    """A cluster of our own in a temporary directory, from initdb to its removal."""

    def __init__(self, pg_ctl: Path) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="test-postgres-"))
        cluster = self.directory / "cluster"  # the data directory, the log and the socket
        cluster.mkdir()
        executable = pg_ctl
        if (owner := _owner()) is not None:
            self.directory.chmod(0o755)
            os.chown(cluster, owner.pw_uid, owner.pw_gid)
            executable = _pg_ctl_as(owner, pg_ctl, self.directory)
        self.port = free_port()
        self.url = sa.make_url(f"postgresql+psycopg://postgres@{HOST}:{self.port}/test")
        self._log = cluster / "postgresql.log"
        self._stopped = False
        self._executor = PostgreSQLExecutor(
            executable=str(executable),
            host=HOST,
            port=self.port,
            datadir=str(cluster / "data"),
            unixsocketdir=str(cluster),
            logfile=str(self._log),
            startparams="-w",  # pg_ctl returns once the server accepts connections
            dbname="test",
            user="postgres",
            postgres_options=f"-c listen_addresses={HOST}",
        )

    @classmethod
    def start(cls, pg_ctl: Path) -> ThrowawayServer:
        """initdb (trust auth, superuser `postgres`), start, create the database `test`."""
        server = cls(pg_ctl)
        try:
            server._executor.start()
            DatabaseJanitor(user="postgres", host=HOST, port=server.port, dbname="test").init()
        except _START_ERRORS as exc:
            log = server._log.read_text(errors="replace") if server._log.exists() else ""
            server.stop()
            tail = f"; its log ends: {_one_line(log.splitlines()[-1])}" if log.strip() else ""
            raise PostgresUnavailable(
                f"the throwaway PostgreSQL ({pg_ctl}) did not start: {_one_line(str(exc))}{tail}"
            ) from exc
        return server

    def restart(self) -> None:
        """A fast shutdown (every session ended, as an operator's restart), then start
        again on the same port and data."""
        self._executor.stop()
        self._executor.start()

    def stop(self) -> None:
        """Stop the server if it runs and remove its directory; a second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._executor.running():
                self._executor.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


@dataclass(frozen=True)
class ExistingServer:
    """TEST_POSTGRES_URL's server: not ours to start, restart or stop."""

    url: sa.URL

    def stop(self) -> None:
        pass


Server = ThrowawayServer | ExistingServer

_shared: Server | None = None
_shared_lock = threading.Lock()


def shared() -> Server:
    """This process's server, started on first use; a throwaway one is stopped at exit,
    if `stop_shared` (the session fixture's finalizer) has not stopped it already.

    Process-wide rather than a fixture alone, because chaos.py needs it outside pytest."""
    global _shared
    with _shared_lock:
        if _shared is None:
            if url := os.environ.get(URL_VARIABLE):
                # The psycopg 3 driver whatever the URL names: it is the one installed.
                _shared = ExistingServer(sa.make_url(url).set(drivername="postgresql+psycopg"))
            else:
                server = ThrowawayServer.start(find_pg_ctl())
                atexit.register(server.stop)
                _shared = server
        return _shared


def stop_shared() -> None:
    """Stop this process's server (a throwaway one); the next `shared()` starts another."""
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.stop()
            _shared = None

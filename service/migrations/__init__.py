"""Schema migrations (Alembic) for SQLite and PostgreSQL, run from Python.

`migrate(engine)` brings any database to the newest revision: `mail-service
migrate` calls it, and so does start-up when MIGRATE_ON_START is true. No
alembic.ini is needed: the script location is this package's directory, so it
works from a source tree and from an installed wheel alike.

A database created before migrations existed (by `metadata.create_all`, tables
but no `alembic_version`) holds exactly the baseline revision's schema; it is
stamped with that revision and then upgraded like any other.

Several instances may start at once against one database: the whole migration
runs in one transaction under a lock (a PostgreSQL advisory lock; SQLite's
write lock through BEGIN IMMEDIATE), so exactly one of them migrates and the
others find the schema current.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = ["BASELINE", "alembic_config", "current_revision", "head_revision", "migrate"]

log = logging.getLogger(__name__)

# The first revision: the schema `metadata.create_all` built before migrations.
BASELINE = "0001"
# pg_advisory_xact_lock key: any constant, as long as nothing else uses it
# ("mail" in ASCII, then 1 for the migration lock).
_PG_LOCK_KEY = 0x6D61696C_00000001
_SCRIPT_LOCATION = Path(__file__).resolve().parent


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic Config for this package's scripts, bound to a connection or a URL.

    A developer writes a new revision against a database at head with
    `command.revision(alembic_config(url=...), autogenerate=True, message=...)`.
    """
    config = Config()
    config.set_main_option("script_location", str(_SCRIPT_LOCATION))
    if url is not None:
        # ConfigParser treats % as interpolation; URLs may carry %-escapes.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise RuntimeError("no migration scripts found")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: no alembic_version table or empty)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _lock(conn: Connection) -> None:
    """Serialize migrations across processes; the lock ends with the transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # The write lock up front, so two processes cannot both see "no schema".
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def migrate(engine: Engine) -> str:
    """Create or upgrade the schema to the newest revision; returns that revision."""
    with engine.connect() as conn:
        _lock(conn)
        config = alembic_config(conn)
        before = MigrationContext.configure(conn).get_current_revision()
        if before is None:
            tables = set(conn.dialect.get_table_names(conn))
            if "messages" in tables:
                # Made by create_all before migrations existed: it is the baseline.
                log.info("database has the schema but no revision; stamping %s", BASELINE)
                command.stamp(config, BASELINE)
        command.upgrade(config, "head")
        after = MigrationContext.configure(conn).get_current_revision()
        conn.commit()
    if after != before:
        log.info("database schema migrated from %s to %s", before or "nothing", after)
    return str(after)

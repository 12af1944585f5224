"""Alembic migrations on SQLite and PostgreSQL: a fresh database and one made by
an earlier version (create_all, no alembic_version) both end up current."""

from __future__ import annotations

import contextlib
import socket
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from service import migrations
from service.config import Settings
from service.db import DatabaseUnavailable, Outbox, make_engine, messages_table
from tests.migrations.helpers import assert_migrated_to_head, differences

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def port_nobody_listens_on() -> Iterator[int]:
    """A port that refuses connections: bound (so nobody else takes it), not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def table_names(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()


def test_fresh_database_is_migrated_to_head_matching_the_metadata(engine: sa.Engine) -> None:
    assert table_names(engine) == set()
    revision = migrations.migrate(engine)
    assert revision == migrations.head_revision()
    assert migrations.current_revision(engine) == revision
    assert differences(engine) == []


def baseline_schema(engine: sa.Engine) -> None:
    """The tables of revision 0001: what `metadata.create_all` built before migrations
    existed, and what the release before revision 0002 made."""
    with engine.begin() as conn:
        command.upgrade(migrations.alembic_config(conn), migrations.BASELINE)


OLD_ROW = {
    "id": "a" * 32,
    "mode": "async",
    "status": "sent",
    "mail_from": "a@example.com",
    "rcpt_tos": '["b@example.com"]',
    "to_addrs": '["b@example.com"]',
    "subject": "kept",
    "message_id": "<kept@example.com>",
    "smtputf8": False,
    "attempts": 1,
    "created_at": 1.0,
    "updated_at": 2.0,
    "sent_at": 2.0,
}


def insert_old_rows(engine: sa.Engine) -> None:
    """A message and its attempt, written with the columns revision 0001 has."""
    with engine.begin() as conn:
        old_messages = sa.table("messages", *(sa.column(name) for name in OLD_ROW))
        conn.execute(old_messages.insert(), OLD_ROW)
        conn.execute(
            sa.text(
                "INSERT INTO attempts (message_id, number, started_at, finished_at, outcome) "
                "VALUES (:id, 1, 1.5, 2.0, 'sent')"
            ),
            {"id": OLD_ROW["id"]},
        )


def test_database_from_create_all_is_stamped_and_keeps_its_rows(engine: sa.Engine) -> None:
    """An earlier version's database: tables but no alembic_version."""
    baseline_schema(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE alembic_version")
    insert_old_rows(engine)
    assert migrations.current_revision(engine) is None
    assert migrations.migrate(engine) == migrations.head_revision()
    assert migrations.current_revision(engine) == migrations.head_revision()
    assert differences(engine) == []
    with engine.connect() as conn:
        subjects = conn.execute(sa.select(messages_table.c.subject)).scalars().all()
    assert subjects == ["kept"]


def test_the_previous_release_database_upgrades_in_place(database_url: str) -> None:
    """Rows and attempt logs made before records had owners, tags and timelines are
    kept; such a record reads for any key (as it did), with its timeline."""
    engine = make_engine(Settings(api_key=["k"], database_url=database_url))  # type: ignore[list-item]
    try:
        baseline_schema(engine)
        insert_old_rows(engine)
        outbox = Outbox(engine)
        outbox.create_schema()  # what start-up does: migrate
        assert migrations.current_revision(engine) == migrations.head_revision()
        assert differences(engine) == []
        record = outbox.get(OLD_ROW["id"], "any-key-name")
        assert record is not None
        assert (record.status, record.subject, record.tags, record.metadata) == (
            "sent",
            "kept",
            [],
            {},
        )
        assert [e.type for e in record.events] == ["message.queued", "message.sent"]
        assert outbox.attempts(OLD_ROW["id"])[0]["outcome"] == "sent"
    finally:
        engine.dispose()


def test_records_made_at_revision_0002_keep_their_timelines(database_url: str) -> None:
    """A retried then failed message, a cancelled one and a synchronous send cut by a
    crash, made before the events table, read the same after it."""
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            command.upgrade(migrations.alembic_config(conn), "0002")
        rows = {
            "b" * 32: ("failed", 2, "421 busy"),
            "c" * 32: ("cancelled", 0, None),
            "d" * 32: ("failed", 0, "interrupted"),
        }
        with engine.begin() as conn:
            old_messages = sa.table("messages", *(sa.column(name) for name in OLD_ROW))
            for id_, (status, attempts, error) in rows.items():
                row = {**OLD_ROW, "id": id_, "status": status, "attempts": attempts}
                conn.execute(old_messages.insert(), {**row, "sent_at": None})
                conn.execute(
                    sa.text("UPDATE messages SET last_error = :e WHERE id = :id"),
                    {"e": error, "id": id_},
                )
            for number in (1, 2):
                conn.execute(
                    sa.text(
                        "INSERT INTO attempts (message_id, number, started_at, finished_at, "
                        "outcome, code, error) VALUES (:id, :n, 1.0, :at, 'temporary', 421, "
                        "'421 busy')"
                    ),
                    {"id": "b" * 32, "n": number, "at": 1.0 + number},
                )
        migrations.migrate(engine)
        outbox = Outbox(engine)
        timelines = {}
        for id_ in rows:
            record = outbox.get(id_)
            assert record is not None
            timelines[id_] = [e.type for e in record.events]
        assert timelines == {
            "b" * 32: ["message.queued", "message.deferred", "message.failed"],
            "c" * 32: ["message.queued", "message.cancelled"],
            "d" * 32: ["message.queued", "message.failed"],
        }
        # History is not news: nothing of it waits for a webhook.
        assert not outbox.any_pending_event()
    finally:
        engine.dispose()


def test_migrate_twice_changes_nothing(engine: sa.Engine) -> None:
    migrations.migrate(engine)
    with engine.connect() as conn:
        before = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    assert migrations.migrate(engine) == migrations.head_revision()
    with engine.connect() as conn:
        after = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    assert before == after == [(migrations.head_revision(),)]


def test_downgrade_to_base_and_up_again(engine: sa.Engine) -> None:
    """The downgrade scripts work, so an operator can roll a release back."""
    migrations.migrate(engine)
    with engine.begin() as conn:
        command.downgrade(migrations.alembic_config(conn), "base")
    assert table_names(engine) <= {"alembic_version"}
    assert migrations.migrate(engine) == migrations.head_revision()
    assert differences(engine) == []


def test_instances_starting_together_migrate_once(database_url: str) -> None:
    """Four processes' worth of engines migrating one fresh database at the same moment."""
    engines = [sa.create_engine(database_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    results: list[str] = []
    errors: list[BaseException] = []

    def run(engine: sa.Engine) -> None:
        try:
            barrier.wait(10)
            results.append(migrations.migrate(engine))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        assert results == [migrations.head_revision()] * len(engines)
        with engines[0].connect() as conn:
            rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        assert rows == [(migrations.head_revision(),)]
    finally:
        for engine in engines:
            engine.dispose()


def test_outbox_create_schema_runs_the_migrations(database_url: str) -> None:
    engine = make_engine(Settings(api_key=["k"], database_url=database_url))  # type: ignore[list-item]
    try:
        Outbox(engine).create_schema()
        assert migrations.current_revision(engine) == migrations.head_revision()
    finally:
        engine.dispose()


def test_create_schema_on_an_unreachable_server_is_database_unavailable() -> None:
    with port_nobody_listens_on() as port:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/test"
        engine = make_engine(Settings(api_key=["k"], database_url=url))  # type: ignore[list-item]
        try:
            with pytest.raises(DatabaseUnavailable):
                Outbox(engine).create_schema()
        finally:
            engine.dispose()


def test_package_data_ships_every_migration_file() -> None:
    """pyproject's package-data globs match every file of service/migrations, so a
    wheel carries them (the .py files of packages ship anyway; the .mako needs this)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["service"]
    package = ROOT / "service"
    shipped = {path for pattern in patterns for path in package.glob(pattern)}
    files = {
        path
        for path in (package / "migrations").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert files
    assert files - shipped == set()


def test_alembic_command_line_style_use_with_a_url(sqlite_url: str) -> None:
    """Without a connection, env.py opens one from the URL (how `alembic` itself runs)."""
    command.upgrade(migrations.alembic_config(url=sqlite_url), "head")
    assert_migrated_to_head(sqlite_url)


def test_offline_mode_prints_the_sql_for_a_dba(capsys: pytest.CaptureFixture[str]) -> None:
    """`--sql` mode: the DDL as text, for review or for a DBA to apply by hand."""
    url = "postgresql+psycopg://"  # offline: only the dialect counts, nothing connects
    command.upgrade(migrations.alembic_config(url=url), "head", sql=True)
    sql = capsys.readouterr().out
    assert "CREATE TABLE messages" in sql
    assert "CREATE TABLE attempts" in sql
    assert "INSERT INTO alembic_version" in sql
    assert "CREATE TABLE message_tags" in sql
    assert f"version_num='{migrations.head_revision()}'" in sql

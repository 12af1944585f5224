"""Checks for the migration tests: how a database differs from the metadata."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service import migrations
from service.db import metadata


def differences(engine: sa.Engine) -> list[object]:
    """What autogenerate would change to make the database match the metadata."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def assert_migrated_to_head(url: str) -> None:
    """The database at `url` is at the head revision and matches the metadata."""
    engine = sa.create_engine(url)
    try:
        assert migrations.current_revision(engine) == migrations.head_revision()
        assert differences(engine) == []
    finally:
        engine.dispose()

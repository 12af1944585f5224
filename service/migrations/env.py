"""Alembic environment, driven from Python: see service.migrations.migrate().

The connection (with its transaction and lock) comes from `config.attributes`;
a URL in the config's `sqlalchemy.url` is the fallback for the `alembic` command
line and offline (`--sql`) mode. The target is our own metadata, so
`alembic revision --autogenerate` compares against service/db.py.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from service.db import metadata

config = context.config


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=metadata,
        compare_type=True,
        # SQLite alters a table by copying it; batch mode writes migrations that way.
        render_as_batch=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run() -> None:
    connection = config.attributes.get("connection")
    if context.is_offline_mode():
        _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = sa.create_engine(str(config.get_main_option("sqlalchemy.url")))
    try:
        with engine.begin() as conn:
            _configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


run()

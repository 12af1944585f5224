"""How long Outbox.insert takes, against the same INSERT + COMMIT on the bare DBAPI connection.

Run: python bench/insert_bench.py [--number N] [--database-url URL]

Prints microseconds per insert (best of 5 runs) on a fresh SQLite file in a temporary
directory (WAL, synchronous=NORMAL, as the service runs it) or on the PostgreSQL server of
--database-url, in a throwaway schema dropped afterwards:
- Outbox.insert of an async message (what /send_async pays);
- the bare DBAPI baseline: one INSERT of the same row and COMMIT on a raw connection
  kept open, i.e. what the database itself costs.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import tempfile
import timeit
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.config import Settings
from service.db import NewMessage, Outbox, make_engine, messages_table
from service.mailer import render_message
from service.models import SendRequest


@contextlib.contextmanager
def scratch(server_url: str | None, tmp: str) -> Iterator[str]:
    """A SQLite file in tmp, or a fresh schema on the server (never its existing tables)."""
    if server_url is None:
        yield f"sqlite:///{tmp}/bench.db"
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{server_url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, scratch(args.database_url, tmp) as url:
        engine = make_engine(Settings(api_key=["k"], database_url=url))
        outbox = Outbox(engine)
        outbox.create_schema()
        request = SendRequest.model_validate(
            {"to": ["user@example.org"], "subject": "Hello", "body": "Hello,\n\nThanks!\n"}
        )
        rendered = render_message(request, default_from="shop@example.com")
        counter = itertools.count()

        def service() -> None:
            outbox.insert(
                NewMessage(
                    id=uuid.uuid4().hex,
                    mode="async",
                    rendered=rendered,
                    to=request.to,
                    subject=request.subject,
                    response_code=202,
                    response_body='{"ok":true}',
                )
            )

        compiled = messages_table.insert().compile(dialect=engine.dialect)
        raw = engine.raw_connection()
        names = list(compiled.positiontup or compiled.params)

        def bare() -> None:
            row = {
                "id": uuid.uuid4().hex,
                "mode": "async",
                "status": "queued",
                "mail_from": rendered.mail_from,
                "rcpt_tos": json.dumps(rendered.rcpt_tos),
                "to_addrs": json.dumps(request.to),
                "subject": request.subject,
                "message_id": rendered.message_id,
                "smtputf8": False,
                "raw": rendered.data,
                "attempts": 0,
                "created_at": float(next(counter)),
                "updated_at": 0.0,
                "next_attempt_at": 0.0,
                "response_code": 202,
                "response_body": '{"ok":true}',
            }
            params = (
                tuple(row.get(n) for n in names)
                if compiled.positional
                else {n: row.get(n) for n in names}
            )
            cursor = raw.cursor()
            cursor.execute(str(compiled), params)
            cursor.close()
            raw.commit()

        print(f"{'case':40} {'us/insert':>10}")
        for name, func in {"Outbox.insert": service, "bare DBAPI INSERT+COMMIT": bare}.items():
            best = min(timeit.repeat(func, number=args.number, repeat=5)) / args.number
            print(f"{name:40} {best * 1e6:10.1f}")
        raw.close()
        engine.dispose()


if __name__ == "__main__":
    main()

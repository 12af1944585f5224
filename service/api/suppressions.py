"""The suppression list's endpoints: list page by page, add one, remove one.

The list is shared by every key: a hard bounce found through one key's message
protects the sender's reputation for all of them.
"""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import HTTPException, Path, Query, Response

from service.api.cursors import bad_cursor, decode_cursor, encode_cursor, filters_digest
from service.api.deps import ClientDep, ServicesDep
from service.api.errors import validation_error
from service.api.offload import database_call
from service.api.records import iso
from service.models import SuppressionModel, SuppressionPage
from service.syntax import canonical_address, parse_address
from service.types import Suppression

__all__ = ["delete_suppression", "list_suppressions", "put_suppression"]

_NO_FILTERS = filters_digest("suppressions")

AddressPath = Annotated[
    str, Path(description="the address, e.g. gone@example.com", examples=["gone@example.com"])
]


def suppression_model(entry: Suppression) -> SuppressionModel:
    return SuppressionModel(
        address=entry.address,
        reason=entry.reason,  # type: ignore[arg-type]  # the column holds only these two
        created_at=iso(entry.created_at) or "",
        message_id=entry.message_id,
    )


def _address(value: str) -> str:
    try:
        return canonical_address(parse_address(value)[1])
    except ValueError as exc:
        raise validation_error(("path", "address"), str(exc), value) from None


async def list_suppressions(
    client: ClientDep,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100, description="at most this many")] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> SuppressionPage:
    """Every suppressed address, newest first, a page at a time."""
    after = None
    if cursor is not None:
        position = decode_cursor(cursor, _NO_FILTERS)
        if not (
            isinstance(position, list)
            and len(position) == 2
            and isinstance(position[0], int | float)
            and isinstance(position[1], str)
        ):
            raise bad_cursor(cursor)
        after = (float(position[0]), position[1])
    outbox = services.outbox
    entries = await database_call(
        outbox, functools.partial(outbox.list_suppressions, limit + 1, after)
    )
    page = entries[:limit]
    last = page[-1] if page else None
    return SuppressionPage(
        suppressions=[suppression_model(entry) for entry in page],
        next_cursor=(
            encode_cursor([last.created_at, last.address], _NO_FILTERS)
            if last is not None and len(entries) > limit
            else None
        ),
    )


async def put_suppression(
    address: AddressPath, client: ClientDep, services: ServicesDep, response: Response
) -> SuppressionModel:
    """Add an address (reason `manual`): 201 when added, 200 with the entry as it
    was when it was listed already."""
    outbox = services.outbox
    entry, added = await database_call(outbox, outbox.suppress, _address(address), "manual")
    response.status_code = 201 if added else 200
    return suppression_model(entry)


async def delete_suppression(
    address: AddressPath, client: ClientDep, services: ServicesDep
) -> Response:
    """Remove an address: mail to it goes out again. 404 when it was not listed."""
    outbox = services.outbox
    removed = await database_call(outbox, outbox.unsuppress, _address(address))
    if not removed:
        raise HTTPException(
            status_code=404, detail="this address is not on the suppression list: nothing to remove"
        )
    return Response(status_code=204)

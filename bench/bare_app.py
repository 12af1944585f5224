"""The accept benchmark's baseline: the least a /send_async endpoint can do.

It checks the X-API-Key, validates the same body with plain constrained types
(a regex per address, lengths and list sizes: what a team would write with
pydantic alone, not the service's own validators, whose cost is part of what is
measured) and answers 202 without storing or sending anything. It is served exactly as the
service is (`service.main.serve`): uvicorn, one worker, the `auto` loop and HTTP
parser (uvloop and httptools when installed, as they are here), access log off,
no server header.

    API_KEY=k PORT=8001 python bench/bare_app.py
"""

from __future__ import annotations

import hmac
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Annotated

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi import Depends, FastAPI, HTTPException, Security
from fastapi.responses import Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# An addr-spec, roughly: no spaces, one @, a dotted domain.
Address = Annotated[str, StringConstraints(pattern=r"^[^\s@<>]+@[^\s@<>]+\.[^\s@<>]+$")]
# One line of header text: no CR or LF.
Line = Annotated[str, StringConstraints(pattern=r"^[^\r\n]*$", max_length=998)]


class SendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    to: Annotated[list[Address], Field(min_length=1, max_length=50)]
    cc: Annotated[list[Address], Field(max_length=50)] = []
    bcc: Annotated[list[Address], Field(max_length=50)] = []
    subject: Line = ""
    body: str | None = None
    html: str | None = None
    from_: Address | None = Field(default=None, alias="from")
    reply_to: Address | None = None
    headers: dict[Annotated[str, StringConstraints(pattern=r"^[!-9;-~]+$")], Line] = {}


api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def create_bare_app(api_keys: list[str]) -> FastAPI:
    encoded = [key.encode() for key in api_keys]

    async def require_api_key(key: Annotated[str | None, Security(api_key_header)]) -> None:
        given = (key or "").encode()
        if not any(hmac.compare_digest(given, known) for known in encoded):
            raise HTTPException(status_code=401, detail="missing or invalid X-API-Key")

    app = FastAPI(title="bare")

    @app.post("/send_async", status_code=202, dependencies=[Depends(require_api_key)])
    async def send_async(payload: SendRequest) -> Response:
        ident = uuid.uuid4().hex
        body = {"ok": True, "id": ident, "status": "queued", "message_id": f"<{ident}@bare>"}
        return Response(content=json.dumps(body), status_code=202, media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    import uvicorn

    keys = [k.strip() for k in os.environ["API_KEY"].split(",") if k.strip()]
    uvicorn.run(
        create_bare_app(keys),
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ["PORT"]),
        access_log=False,
        log_config=None,
        server_header=False,
    )


if __name__ == "__main__":
    main()

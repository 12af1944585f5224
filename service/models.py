"""Pydantic schemas of the HTTP API.

INTERFACE STUB written by the lead; the API owner fills in validation. Field
names and types are the contract's (../shared/contract.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SendRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    to: list[str]  # a single address is accepted and becomes a one-item list
    cc: list[str] = Field(default_factory=list)
    bcc: list[str] = Field(default_factory=list)
    subject: str = ""
    body: str | None = None
    html: str | None = None
    from_: str | None = Field(default=None, alias="from")
    reply_to: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)


class RejectedRecipientModel(BaseModel):
    recipient: str
    code: int
    message: str


class SendResponse(BaseModel):
    ok: bool
    id: str
    status: Literal["sent", "queued", "failed"]
    message_id: str | None
    error: str | None = None
    rejected: list[RejectedRecipientModel] = Field(default_factory=list)


class MessageStatus(BaseModel):
    id: str
    status: Literal["queued", "sending", "sent", "failed"]
    attempts: int
    last_error: str | None
    created_at: str
    updated_at: str
    sent_at: str | None
    message_id: str | None
    to: list[str]
    subject: str


class ErrorResponse(BaseModel):
    detail: str


class HealthResponse(BaseModel):
    status: Literal["ok"]

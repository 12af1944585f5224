"""Settings from environment variables (twelve-factor), validated at start-up.

Only `main.py` reads the environment (`load_settings()`); tests build
`Settings(...)` directly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import socket
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, HttpUrl, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# A key's name, as in `NAME=SECRET`: what its records belong to.
KEY_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_KEY_NAME = re.compile(KEY_NAME_PATTERN)
# BOUNCE_ADDRESS: ASCII, no quoting, so that `local+id@domain` is an address too.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9._-]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+|[A-Za-z0-9._-]+@localhost"
)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One entry of API_KEY: the name its records belong to, and the secret."""

    name: str
    secret: str


def key_fingerprint(secret: str) -> str:
    """A short, stable, non-reversible name for a secret (a bare key's name)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def parse_api_key(entry: str) -> ApiKey:
    """`NAME=SECRET`, or a bare `SECRET` named by its fingerprint.

    Only a valid name before the first `=` makes a name, and base64 padding after
    it (`abc==`) does not make a secret, so a bare base64 secret stays bare.
    """
    name, sep, secret = entry.partition("=")
    if sep and _KEY_NAME.fullmatch(name) and secret.strip("="):
        return ApiKey(name=name, secret=secret)
    return ApiKey(name=key_fingerprint(entry), secret=entry)


class Settings(BaseSettings):
    """Every variable of the contract's table, plus the documented extras below it."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # -- the contract's table -------------------------------------------------
    api_key: Annotated[list[SecretStr], NoDecode] = Field(min_length=1)
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    database_url: str = "sqlite:///./mail.db"
    mail_from: str = "noreply@localhost"
    allowed_senders: CommaList | None = None
    smtp_host: str = "localhost"
    smtp_port: Annotated[int, Field(gt=0, le=65535)] = 1025
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["none", "starttls", "ssl"] = "none"
    smtp_verify_tls: bool = True
    smtp_ca_file: Path | None = None
    smtp_timeout: PositiveFloat = 10.0
    smtp_max_retries: NonNegativeInt = 3
    smtp_backoff_base: NonNegativeFloat = 1.0
    smtp_backoff_max: NonNegativeFloat = 60.0
    queue_maxsize: PositiveInt = 1000
    # Postfix's default_destination_concurrency_limit: over a network each
    # connection waits a round trip or two per message, so the drain grows with
    # the connections; ConcurrencyLimit starts at 4 and opens more only while mail
    # waits and the relay keeps accepting.
    worker_concurrency: PositiveInt = 20
    max_recipients: PositiveInt = 50
    max_message_bytes: PositiveInt = 10 * 1024 * 1024
    # POST /send_batch: messages per batch, and its request body's limit.
    batch_max: PositiveInt = 500
    batch_max_bytes: PositiveInt = 50 * 1024 * 1024
    log_level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] = "INFO"
    # Webhooks (unset URL: none). The secret is `whsec_` and base64, as the
    # Standard Webhooks specification has it.
    webhook_url: HttpUrl | None = None
    webhook_secret: SecretStr | None = None
    webhook_timeout: PositiveFloat = 10.0
    webhook_retry_max: PositiveFloat = 60.0
    webhook_max_age: PositiveFloat = 3 * 24 * 3600.0
    # Bounces (unset: off): VERP envelope senders, and the listener that reads them.
    bounce_address: str | None = None
    bounce_smtp_host: str = "127.0.0.1"
    bounce_smtp_port: Annotated[int, Field(ge=0, le=65535)] | None = None

    # -- extras (documented in the README) -------------------------------------
    # SQLite durability: NORMAL survives a process crash, FULL also a power loss.
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    # How long a claimed message may stay in `sending` before another worker
    # (or the next start) takes it back.
    lease_seconds: PositiveFloat = 60.0
    # How often the scheduler looks for due retries and expired leases.
    poll_interval: PositiveFloat = 0.5
    # Seconds to let deliveries in flight finish on SIGTERM.
    shutdown_grace_seconds: NonNegativeFloat = 10.0
    idempotency_ttl_seconds: PositiveFloat = 24 * 3600.0
    # Purge the bodies of sent messages after this many seconds (unset: keep).
    retention_seconds: PositiveFloat | None = None
    smtp_max_messages_per_connection: PositiveInt = 100
    smtp_idle_timeout: PositiveFloat = 30.0
    metrics_enabled: bool = True
    # Per-API-key token bucket; unset turns rate limiting off.
    rate_limit_per_second: PositiveFloat | None = None
    rate_limit_burst: PositiveInt = 20
    # Apply schema migrations at start-up (else run `mail-service migrate`).
    migrate_on_start: bool = True
    access_log: bool = False
    # The name this process's claims are made under (see `instance_name`).
    instance_id: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[!-~]+$")] | None = (
        None
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _split_api_keys(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("api_key")
    @classmethod
    def _one_name_per_secret(cls, value: list[SecretStr]) -> list[SecretStr]:
        names: dict[str, str] = {}
        for entry in value:
            key = parse_api_key(entry.get_secret_value())
            if names.setdefault(key.secret, key.name) != key.name:
                raise ValueError("one secret appears under two names")
        return value

    @field_validator("allowed_senders", mode="before")
    @classmethod
    def _split_senders(cls, value: object) -> object:
        return _split_commas(value) or None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _parse_url(cls, value: str) -> str:
        try:
            make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a SQLAlchemy database URL: {exc}") from None
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> Settings:
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ValueError("SMTP_USERNAME and SMTP_PASSWORD must be set together")
        return self

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value()
        body = text.removeprefix("whsec_")
        try:
            key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except binascii.Error:
            key = b""
        if not text.startswith("whsec_") or len(key) < 16:
            raise ValueError("must be whsec_ followed by base64 of at least 16 bytes")
        return value

    @model_validator(mode="after")
    def _check_webhooks(self) -> Settings:
        if self.webhook_url is not None and self.webhook_secret is None:
            raise ValueError("WEBHOOK_SECRET is required when WEBHOOK_URL is set")
        if self.bounce_smtp_port is not None and self.bounce_address is None:
            raise ValueError(
                "BOUNCE_SMTP_PORT needs BOUNCE_ADDRESS: the listener takes mail for its "
                "VERP addresses only"
            )
        return self

    @field_validator("bounce_address")
    @classmethod
    def _bounce_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        local, at, domain = value.partition("@")
        if not (at and local and domain) or "+" in local or not _PLAIN_ADDRESS.fullmatch(value):
            raise ValueError(
                "must be a plain address such as bounces@mail.example.com (no '+': "
                "the record id goes there)"
            )
        return value.lower()

    @cached_property  # read on every request
    def api_keys(self) -> list[ApiKey]:
        """The keys with their names (`NAME=SECRET` entries; rotation repeats a name)."""
        return [parse_api_key(key.get_secret_value()) for key in self.api_key]

    @property
    def instance_name(self) -> str:
        """INSTANCE_ID, or the host name and listening port: instances on one host
        differ, and a restart in the same place keeps its name, so it takes back its
        own claims at once instead of waiting for their lease."""
        return self.instance_id or f"{socket.gethostname()}:{self.port}"

    @property
    def is_sqlite(self) -> bool:
        return make_url(self.database_url).get_backend_name() == "sqlite"


def describe_error(error: ValidationError) -> str:
    """One line naming each bad variable, never echoing its value (it may be a secret)."""
    parts = []
    for item in error.errors():
        name = "_".join(str(part) for part in item["loc"]).upper() or "settings"
        parts.append(f"{name}: {item['msg']}")
    return "configuration error: " + "; ".join(parts)


def load_settings() -> Settings:
    """Read the environment; on a bad value print one line and exit with status 2."""
    try:
        return Settings()  # type: ignore[call-arg]  # API_KEY comes from the environment
    except ValidationError as exc:
        print(describe_error(exc), file=sys.stderr)
        raise SystemExit(2) from None

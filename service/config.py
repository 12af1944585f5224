"""Settings from environment variables (twelve-factor), validated at start-up.

Only `main.py` reads the environment (`load_settings()`); tests build
`Settings(...)` directly.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
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
    worker_concurrency: PositiveInt = 4
    max_recipients: PositiveInt = 50
    max_message_bytes: PositiveInt = 10 * 1024 * 1024
    log_level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] = "INFO"

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

    @property
    def api_keys(self) -> list[str]:
        return [key.get_secret_value() for key in self.api_key]

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

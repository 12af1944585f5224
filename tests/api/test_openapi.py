"""The generated OpenAPI schema documents the contract and shows no secret."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.api.helpers import KEY, OTHER_KEY, MakeSettings

pytestmark = pytest.mark.unit


@pytest.fixture
def schema(make_settings: MakeSettings) -> dict[str, Any]:
    # The schema needs no lifespan: a client without `with` does not start the worker.
    settings: Settings = make_settings(smtp_username="relay", smtp_password="relay-secret")
    response = TestClient(create_app(settings)).get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def test_api_key_security_scheme_is_declared(schema: dict[str, Any]) -> None:
    schemes = schema["components"]["securitySchemes"]
    assert {"type": "apiKey", "in": "header", "name": "X-API-Key"}.items() <= next(
        iter(schemes.values())
    ).items()


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/send"), ("post", "/send_async"), ("get", "/messages/{message_id}")],
)
def test_protected_operations_require_the_key(
    schema: dict[str, Any], method: str, path: str
) -> None:
    operation = schema["paths"][path][method]
    assert operation["security"] == [{name: []} for name in schema["components"]["securitySchemes"]]
    assert "401" in operation["responses"]


@pytest.mark.parametrize(("method", "path"), [("get", "/health"), ("get", "/metrics")])
def test_public_operations_need_no_key(schema: dict[str, Any], method: str, path: str) -> None:
    assert "security" not in schema["paths"][path][method]


def test_schemas_for_the_contract_models_are_present(schema: dict[str, Any]) -> None:
    schemas = schema["components"]["schemas"]
    assert {"SendRequest", "SendResponse", "MessageStatus"} <= set(schemas)
    assert set(schemas["SendRequest"]["properties"]) == {
        "to", "cc", "bcc", "subject", "body", "html", "from", "reply_to", "headers"
    }  # fmt: skip
    to_types = {option["type"] for option in schemas["SendRequest"]["properties"]["to"]["anyOf"]}
    assert to_types == {"string", "array"}


def test_documented_answers_per_endpoint(schema: dict[str, Any]) -> None:
    send = schema["paths"]["/send"]["post"]["responses"]
    send_async = schema["paths"]["/send_async"]["post"]["responses"]
    message = schema["paths"]["/messages/{message_id}"]["get"]["responses"]
    assert {"200", "401", "409", "413", "422", "429", "500"} <= set(send)
    assert send["500"]["content"]["application/json"]["schema"]["$ref"].endswith("/SendResponse")
    assert {"202", "401", "409", "413", "422", "429", "503"} <= set(send_async)
    assert {"200", "401", "404"} <= set(message)


def test_idempotency_key_header_is_documented(schema: dict[str, Any]) -> None:
    for path in ("/send", "/send_async"):
        names = [p["name"] for p in schema["paths"][path]["post"].get("parameters", [])]
        assert "Idempotency-Key" in names


def test_schema_shows_no_secret(schema: dict[str, Any]) -> None:
    text = str(schema)
    for secret in (KEY, OTHER_KEY, "relay-secret"):
        assert secret not in text

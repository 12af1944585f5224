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
    [
        ("post", "/send"),
        ("post", "/send_async"),
        ("post", "/send_batch"),
        ("get", "/messages"),
        ("get", "/messages/{message_id}"),
        ("post", "/messages/{message_id}/cancel"),
        ("get", "/suppressions"),
        ("put", "/suppressions/{address}"),
        ("delete", "/suppressions/{address}"),
    ],
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
        "to", "cc", "bcc", "subject", "body", "html", "from", "reply_to", "headers",
        "attachments", "tags", "metadata", "send_at",
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


OUR_MODELS = (
    "SendRequest",
    "Attachment",
    "SendResponse",
    "RejectedRecipientModel",
    "BatchRequest",
    "BatchResponse",
    "MessageStatus",
    "MessageList",
    "AttachmentSummary",
    "EventModel",
    "ErrorResponse",
    "HealthResponse",
)


@pytest.mark.parametrize("name", OUR_MODELS)
def test_every_field_of_our_models_is_described(schema: dict[str, Any], name: str) -> None:
    properties = schema["components"]["schemas"][name]["properties"]
    undocumented = [field for field, spec in properties.items() if not spec.get("description")]
    assert undocumented == []


@pytest.mark.parametrize("name", ["SendRequest", "Attachment", "BatchRequest", "MessageStatus"])
def test_request_and_record_models_carry_examples(schema: dict[str, Any], name: str) -> None:
    assert schema["components"]["schemas"][name]["examples"]


def test_list_parameters_are_documented(schema: dict[str, Any]) -> None:
    parameters = schema["paths"]["/messages"]["get"]["parameters"]
    assert {p["name"] for p in parameters} == {"status", "tag", "to", "since", "limit", "cursor"}
    assert all(p.get("description") for p in parameters)

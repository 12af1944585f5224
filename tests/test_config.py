"""API_KEY entries: `NAME=SECRET`, bare secrets named by their fingerprint."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.config import ApiKey, Settings, describe_error, key_fingerprint, parse_api_key

pytestmark = pytest.mark.unit


def test_named_entries_and_rotation_under_one_name() -> None:
    settings = Settings(api_key="billing=old-secret,billing=new-secret,support=s3")  # type: ignore[arg-type]
    assert settings.api_keys == [
        ApiKey("billing", "old-secret"),
        ApiKey("billing", "new-secret"),
        ApiKey("support", "s3"),
    ]


@pytest.mark.parametrize(
    "entry",
    [
        "plain-secret",
        "c2VjcmV0==",  # base64 padding is not a NAME=SECRET split
        "=leading",
        "has space=secret",  # not a valid name: the whole entry is the secret
    ],
)
def test_bare_secret_is_named_by_its_fingerprint(entry: str) -> None:
    assert parse_api_key(entry) == ApiKey(key_fingerprint(entry), entry)


def test_a_secret_may_contain_equals_after_a_name() -> None:
    assert parse_api_key("ci=abc=def==") == ApiKey("ci", "abc=def==")


def test_one_secret_under_two_names_stops_start_up_naming_api_key() -> None:
    with pytest.raises(ValidationError) as error:
        Settings(api_key="a=same,b=same")  # type: ignore[arg-type]
    line = describe_error(error.value)
    assert line.startswith("configuration error: API_KEY:")
    assert "same" not in line  # never the secret

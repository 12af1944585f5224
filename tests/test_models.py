"""The HTTP schemas (service.models): SendRequest validation (addresses, header injection,
reserved headers, content rules) and the answer models' fields."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.models import MessageStatus, SendRequest, SendResponse
from tests.api.helpers import STATUS_KEYS

pytestmark = pytest.mark.unit


def request(**fields: Any) -> dict[str, Any]:
    return {"to": "ana@example.com", "subject": "Hi", "body": "Hello", **fields}


def errors_of(data: Any) -> str:
    with pytest.raises(ValidationError) as info:
        SendRequest.model_validate(data)
    return json.dumps(info.value.errors(include_url=False, include_context=False))


def test_single_address_becomes_a_one_item_list() -> None:
    assert SendRequest.model_validate(request(to="ana@example.com")).to == ["ana@example.com"]


def test_list_of_addresses_is_kept_in_order() -> None:
    parsed = SendRequest.model_validate(request(to=["b@example.com", "a@example.com"]))
    assert parsed.to == ["b@example.com", "a@example.com"]


def test_from_is_read_from_its_json_name() -> None:
    parsed = SendRequest.model_validate(request(**{"from": "app@example.com"}))
    assert parsed.from_ == "app@example.com"


def test_empty_recipient_list_is_refused() -> None:
    assert "to" in errors_of(request(to=[]))


def test_missing_to_is_refused() -> None:
    data = request()
    del data["to"]
    assert "missing" in errors_of(data)


@pytest.mark.parametrize(
    "address",
    [
        "ana@example.com",
        "Ana Lopez <ana@example.com>",
        '"Lopez, Ana" <ana@example.com>',
        '"Ana \\"the boss\\" Lopez" <ana@example.com>',
        "<ana@example.com>",
        "Jörg <jörg@bücher.de>",
        "用户@例子.广告",
        "ana@xn--bcher-kva.de",
        "  ana@example.com  ",
    ],
)
def test_valid_address_forms_are_accepted(address: str) -> None:
    SendRequest.model_validate(request(to=address, cc=[address], bcc=[address]))


def test_addresses_are_stored_without_surrounding_space() -> None:
    assert SendRequest.model_validate(request(to=" ana@example.com ")).to == ["ana@example.com"]


def test_comma_separated_list_in_one_string_asks_for_a_json_list() -> None:
    assert "send several recipients as a JSON list" in errors_of(request(to="a@x.com, b@y.com"))


def test_semicolon_separated_list_in_one_string_is_refused() -> None:
    assert "one address per item" in errors_of(request(cc=["a@x.com; b@y.com"]))


def test_unquoted_display_name_with_a_comma_is_refused() -> None:
    assert "one address per item" in errors_of(request(to="Lopez, Ana <ana@example.com>"))


def test_newline_smuggling_a_bcc_into_to_is_refused() -> None:
    assert "U+000A" in errors_of(request(to="a@x.com\nBcc: c@z.com"))


def test_carriage_return_in_an_address_is_refused() -> None:
    assert "U+000D" in errors_of(request(to=["a@x.com\r"]))


def test_unterminated_quoted_display_name_is_refused() -> None:
    assert "closing quote" in errors_of(request(to='"Ana <ana@example.com>'))


def test_display_name_looking_like_an_address_must_be_quoted() -> None:
    assert "put it in double quotes" in errors_of(request(to="ceo@bank.com <x@evil.com>"))


def test_angle_bracket_in_the_middle_is_refused() -> None:
    assert "Name <addr@example.com>" in errors_of(request(to="ana <ana@example.com> x"))


def test_closing_bracket_without_opening_is_refused() -> None:
    assert "without a matching" in errors_of(request(to="ana@example.com>"))


@pytest.mark.parametrize("address", ["", "   ", "ana", "ana@", "@example.com", "a b@example.com"])
def test_malformed_addresses_are_refused(address: str) -> None:
    errors_of(request(to=address))


@pytest.mark.parametrize("field", ["from", "reply_to"])
def test_from_and_reply_to_are_validated_as_addresses(field: str) -> None:
    assert "valid email address" in errors_of(request(**{field: "not-an-address"}))


@pytest.mark.parametrize(
    "char", ["\r", "\n", "\x00", "\t", "\x1b", "\x7f", "\x85", "\u2028", "\u2029"]
)
def test_control_characters_in_the_subject_are_refused(char: str) -> None:
    assert "control character" in errors_of(request(subject=f"Hello{char}Bcc: x@evil.com"))


@pytest.mark.parametrize("char", ["\r", "\n", "\x00", "\x0b"])
def test_control_characters_in_header_values_are_refused(char: str) -> None:
    assert "control character" in errors_of(request(headers={"X-Tag": f"a{char}Bcc: x@y.z"}))


@pytest.mark.parametrize("name", ["X Tag", "X-Tag:", "X-Tag\r\nBcc", "", "Über", "X\x00", "a" * 77])
def test_header_names_must_be_rfc5322_field_names(name: str) -> None:
    assert "not a header field name" in errors_of(request(headers={name: "v"}))


def test_extension_header_is_accepted() -> None:
    parsed = SendRequest.model_validate(request(headers={"X-Campaign": "spring", "List-Id": "x"}))
    assert parsed.headers == {"X-Campaign": "spring", "List-Id": "x"}


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("From", "'from'"),
        ("to", "'to'"),
        ("CC", "'cc'"),
        ("Bcc", "'bcc'"),
        ("Reply-To", "'reply_to'"),
        ("Subject", "'subject'"),
        ("Message-ID", "the service sets it"),
        ("Date", "the service sets it"),
        ("MIME-Version", "the service sets it"),
        ("Content-Type", "'body' and 'html'"),
        ("content-transfer-encoding", "'body' and 'html'"),
        ("Sender", "from 'from'"),
        ("Return-Path", "envelope sender"),
        ("Received", "relays add it"),
    ],
)
def test_reserved_headers_are_refused_naming_the_field_to_use(name: str, hint: str) -> None:
    text = errors_of(request(headers={name: "x"}))
    assert f"header '{name}' is reserved" in text
    assert hint in text


def test_same_header_twice_in_different_case_is_refused() -> None:
    assert "given twice" in errors_of(request(headers={"X-Tag": "a", "x-tag": "b"}))


def test_body_or_html_is_required() -> None:
    assert "at least one of 'body' and 'html'" in errors_of({"to": "ana@example.com"})


def test_html_alone_is_enough() -> None:
    assert SendRequest.model_validate({"to": "a@x.com", "html": "<p>hi</p>"}).body is None


def test_body_may_contain_newlines_and_tabs() -> None:
    assert SendRequest.model_validate(request(body="line 1\r\n\tline 2\n")).body


def test_lone_surrogate_in_body_is_refused() -> None:
    assert "lone surrogate" in errors_of(request(body="a\ud800b"))


def test_unknown_field_is_refused() -> None:
    assert "extra_forbidden" in errors_of(request(attachment=[]))


def test_recipient_count_spans_to_cc_and_bcc() -> None:
    parsed = SendRequest.model_validate(request(to=["a@x.com"], cc=["b@x.com"], bcc=["c@x.com"]))
    assert parsed.recipient_count == 3


def test_response_models_carry_the_contract_fields() -> None:
    assert set(SendResponse.model_fields) >= {"ok", "id", "status", "message_id", "error"}
    assert set(MessageStatus.model_fields) >= STATUS_KEYS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["to", "cc", "bcc", "subject", "body", "html", "from", "reply_to", "headers", "x"]
)
address_like = st.one_of(
    st.text(max_size=30),
    st.builds(lambda a, b: f"{a}@{b}", st.text(max_size=10), st.text(max_size=10)),
    st.sampled_from(["ana@example.com", '"A, B" <a@b.co>', "a@x.com, b@y.com"]),
)
bodies = st.dictionaries(
    field_names,
    st.one_of(json_values, address_like, st.lists(address_like, max_size=3)),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(bodies)
def test_any_json_body_is_either_valid_or_a_validation_error(data: dict[str, Any]) -> None:
    """Only ValidationError may come out: anything else would be a 500 at the API."""
    try:
        parsed = SendRequest.model_validate(data)
    except ValidationError:
        return
    # Whatever passes holds no character that could break a header line.
    header_bound = [*parsed.to, *parsed.cc, *parsed.bcc, parsed.subject, *parsed.headers.values()]
    header_bound += [*parsed.headers, parsed.from_ or "", parsed.reply_to or ""]
    assert not any(char in value for value in header_bound for char in "\r\n\x00")


@pytest.mark.parametrize("address", ["noreply@localhost", "Dev <dev@mail.LOCALHOST>"])
def test_localhost_addresses_are_accepted_for_development(address: str) -> None:
    SendRequest.model_validate(request(to=address, **{"from": address}))


@pytest.mark.parametrize("address", ["a@x..localhost", "a@-x.localhost", "a b@localhost"])
def test_malformed_localhost_addresses_are_refused(address: str) -> None:
    assert "valid email address" in errors_of(request(to=address))

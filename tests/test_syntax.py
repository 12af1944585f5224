"""Address and header rules (service.syntax), called directly: parsing, the canonical
form, and the forbidden characters."""

from __future__ import annotations

import sys
import unicodedata

import pytest
from email_validator import validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from service.syntax import (
    SURROGATE,
    bad_character,
    canonical_address,
    check_encodable,
    common_addr_spec,
    parse_address,
)

pytestmark = pytest.mark.unit


def test_parse_address_splits_display_name_and_addr_spec() -> None:
    assert parse_address('"Lopez, Ana" <ana@example.com>') == ('"Lopez, Ana"', "ana@example.com")
    assert parse_address("ana@example.com") == ("", "ana@example.com")


def test_canonical_address_lowercases_and_encodes_only_the_domain() -> None:
    assert canonical_address("Ana@EXAMPLE.com") == "Ana@example.com"
    assert canonical_address("a@BÜCHER.de") == "a@xn--bcher-kva.de"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_parse_address_raises_only_value_error(text: str) -> None:
    try:
        name, addr = parse_address(text)
    except ValueError:
        return
    assert "@" in addr
    assert "\n" not in name + addr


def test_forbidden_header_characters_are_exactly_the_unicode_categories() -> None:
    """The regular expressions behind header and body checks, against unicodedata over
    every code point: Cc, Zl, Zp and Cs in header values; Cs alone in bodies."""
    header_forbidden = {"Cc", "Zl", "Zp", "Cs"}
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        category = unicodedata.category(char)
        assert (bad_character(char) is not None) == (category in header_forbidden), hex(code)
        assert (SURROGATE.search(char) is not None) == (category == "Cs"), hex(code)


def test_the_first_forbidden_character_is_the_one_named() -> None:
    assert bad_character("ok\u2028then\r\n") == "U+2028"
    with pytest.raises(ValueError, match=r"U\+D800"):
        check_encodable("text \ud800 more \udfff")


def test_a_lone_surrogate_at_the_end_of_10_mb_of_text_is_found() -> None:
    with pytest.raises(ValueError, match="lone surrogate U\\+DC00"):
        check_encodable("x" * 10_000_000 + "\udc00")


_LABEL = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,20}[A-Za-z0-9])?", fullmatch=True)
_COMMON_SHAPED = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    st.from_regex(
        r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,30}(\.[A-Za-z0-9_-]{1,10}){0,2}", fullmatch=True
    ),
    st.lists(_LABEL, min_size=1, max_size=3),
    st.from_regex(r"[A-Za-z]{2,8}|test|local|onion|invalid|localhost|arpa", fullmatch=True),
)


@settings(max_examples=1000, deadline=None)
@given(_COMMON_SHAPED)
def test_the_common_address_shortcut_agrees_with_email_validator(addr: str) -> None:
    """Whatever the shortcut accepts, email-validator accepts with the same parts."""
    common = common_addr_spec(addr)
    if common is None:
        return
    result = validate_email(addr, check_deliverability=False, allow_smtputf8=True)
    assert common == (result.local_part, result.ascii_domain.lower())


@pytest.mark.parametrize(
    "addr",
    [
        "a@b",  # no period: email-validator refuses it
        "a@example.test",  # special use
        "a@mail.localhost",
        "a@xn--bcher-kva.de",  # Punycode: email-validator checks it
        "a@ab--cd.com",
        "a@example.123",  # a numeric top-level label
        "\u00e9@example.com",
        "a..b@example.com",
        f"{'a' * 65}@example.com",
    ],
)
def test_anything_unusual_is_left_to_email_validator(addr: str) -> None:
    assert common_addr_spec(addr) is None


def test_the_common_address_shortcut_takes_the_common_address() -> None:
    assert common_addr_spec("Ana.B+x@Mail.Example.COM") == ("Ana.B+x", "mail.example.com")

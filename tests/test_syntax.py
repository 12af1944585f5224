"""Address and header rules (service.syntax), called directly: parsing, the canonical
form, and the forbidden characters."""

from __future__ import annotations

import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.syntax import (
    SURROGATE,
    bad_character,
    canonical_address,
    check_encodable,
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

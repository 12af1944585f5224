"""VERP (service.bounces.verp): the record id into the envelope sender and back out of
the address a bounce arrives at, and every address that is not one of ours refused."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.bounces import record_id_from_verp, verp_address
from service.ids import new_id

pytestmark = pytest.mark.unit

BOUNCES = "bounces@mail.example.com"
RECORD_ID = "0192a4c6e1f07c3d9a8b2e4f6a1c3e5b"

record_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)
local_parts = st.from_regex(r"[A-Za-z0-9._+-]{1,30}", fullmatch=True)
domains = st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}", fullmatch=True)


def test_verp_address_puts_the_record_id_after_a_plus() -> None:
    assert verp_address(BOUNCES, RECORD_ID) == f"bounces+{RECORD_ID}@mail.example.com"


def test_verp_address_takes_the_service_s_record_ids() -> None:
    record_id = new_id()
    assert record_id_from_verp(BOUNCES, verp_address(BOUNCES, record_id)) == record_id


@pytest.mark.parametrize(
    "record_id",
    [
        "",
        RECORD_ID.upper(),
        RECORD_ID[:-1],
        RECORD_ID + "0",
        "0192a4c6-e1f0-7c3d-9a8b-2e4f6a1c3e5b",
        "g" * 32,
        RECORD_ID[:-1] + "\n",
    ],
)
def test_verp_address_refuses_what_is_not_a_record_id(record_id: str) -> None:
    with pytest.raises(ValueError, match="record id"):
        verp_address(BOUNCES, record_id)


@pytest.mark.parametrize("bounce_address", ["", "bounces", "@mail.example.com", "bounces@"])
def test_verp_address_refuses_a_bounce_address_without_local_part_or_domain(
    bounce_address: str,
) -> None:
    with pytest.raises(ValueError, match="not an address"):
        verp_address(bounce_address, RECORD_ID)


@given(local=local_parts, domain=domains, record_id=record_ids)
def test_a_verp_address_gives_back_its_record_id(local: str, domain: str, record_id: str) -> None:
    bounce_address = f"{local}@{domain}"
    verp = verp_address(bounce_address, record_id)
    assert record_id_from_verp(bounce_address, verp) == record_id
    # Some MTAs change the case of the address on its way back.
    assert record_id_from_verp(bounce_address, verp.upper()) == record_id
    assert record_id_from_verp(bounce_address, verp.lower()) == record_id


def test_the_domain_and_the_base_compare_without_regard_to_case() -> None:
    recipient = f"Bounces+{RECORD_ID.upper()}@Mail.Example.COM"
    assert record_id_from_verp(BOUNCES, recipient) == RECORD_ID


@pytest.mark.parametrize(
    "recipient",
    [
        BOUNCES,  # the bounce address itself carries no id
        "bounces+@mail.example.com",
        f"postmaster+{RECORD_ID}@mail.example.com",
        f"xbounces+{RECORD_ID}@mail.example.com",
        f"bounce+{RECORD_ID}@mail.example.com",
        f"bounces-{RECORD_ID}@mail.example.com",
        f"bounces+{RECORD_ID}@example.com",
        f"bounces+{RECORD_ID}@sub.mail.example.com",
        f"bounces+{RECORD_ID}@mail.example.com.evil.test",
        f"bounces+{RECORD_ID[:-1]}@mail.example.com",
        f"bounces+{RECORD_ID}0@mail.example.com",
        f"bounces+{RECORD_ID[:-1]}g@mail.example.com",
        f"bounces+{RECORD_ID}+x@mail.example.com",
        f"bounces+x+{RECORD_ID}@mail.example.com",
        "bounces+0192a4c6-e1f0-7c3d-9a8b-2e4f6a1c3e5b@mail.example.com",
        f"bounces+{RECORD_ID}",
        f"bounces+{RECORD_ID}@",
        f"<bounces+{RECORD_ID}@mail.example.com>",
        "",
        "@",
    ],
)
def test_an_address_that_is_not_one_of_ours_gives_none(recipient: str) -> None:
    assert record_id_from_verp(BOUNCES, recipient) is None


def test_a_bounce_address_with_a_plus_of_its_own_keeps_it() -> None:
    bounce_address = "mail+bounces@example.com"
    verp = verp_address(bounce_address, RECORD_ID)
    assert verp == f"mail+bounces+{RECORD_ID}@example.com"
    assert record_id_from_verp(bounce_address, verp) == RECORD_ID
    assert record_id_from_verp(bounce_address, f"mail+{RECORD_ID}@example.com") is None


@given(recipient=st.text(max_size=80))
def test_any_recipient_gives_a_record_id_or_none(recipient: str) -> None:
    found = record_id_from_verp(BOUNCES, recipient)
    assert found is None or re.fullmatch(r"[0-9a-f]{32}", found)

"""The exception tree that crosses layers (service.errors)."""

from __future__ import annotations

import pytest

from service.errors import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError

pytestmark = pytest.mark.unit


def test_error_hierarchy_is_pinned() -> None:
    """The worker relies on this shape: one base, temporary and permanent beneath it."""
    assert issubclass(TemporaryDeliveryError, DeliveryError)
    assert issubclass(PermanentDeliveryError, DeliveryError)
    assert not issubclass(TemporaryDeliveryError, PermanentDeliveryError)
    assert not issubclass(PermanentDeliveryError, TemporaryDeliveryError)
    assert DeliveryError.__bases__ == (Exception,)
    assert TemporaryDeliveryError.temporary is True
    assert PermanentDeliveryError.temporary is False
    error = TemporaryDeliveryError("4.7.1 Try later", code=451, recipient="b@example.com")
    assert (error.reply, error.code, error.recipient) == ("4.7.1 Try later", 451, "b@example.com")
    assert str(error) == "451 4.7.1 Try later (recipient b@example.com)"
    assert str(PermanentDeliveryError("no route")) == "no route"

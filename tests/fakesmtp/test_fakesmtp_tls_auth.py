"""STARTTLS, implicit TLS, --require-tls, and AUTH PLAIN/LOGIN, over real sockets."""

from __future__ import annotations

import base64
import smtplib
import ssl
from pathlib import Path

import pytest

from fakesmtp import FakeSMTPServer, replies
from fakesmtp.certs import make_self_signed
from fakesmtp.pytest_plugin import FakeSMTPFactory
from tests.fakesmtp.helpers import client_tls_context, make_message

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_self_signed(tmp_path_factory.mktemp("certs"))


def test_self_signed_certificate_is_written_with_a_private_key(tmp_path: Path) -> None:
    cert_path, key_path = make_self_signed(tmp_path / "sub")
    assert Path(cert_path).read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" in Path(key_path).read_bytes()
    assert Path(key_path).stat().st_mode & 0o077 == 0


def test_starttls_is_offered_and_upgrades_the_session(
    fakesmtp_factory: FakeSMTPFactory, cert: tuple[str, str]
) -> None:
    server = fakesmtp_factory(tls_cert=cert[0], tls_key=cert[1])
    with smtplib.SMTP("localhost", server.port, timeout=5) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        client.starttls(context=client_tls_context(cert[0]))
        client.ehlo()
        assert not client.has_extn("starttls")
        client.sendmail("s@example.com", ["r@example.com"], make_message("secret"))
    [message] = server.messages()
    assert message.tls is True


def test_plain_session_on_a_starttls_server_is_marked_not_tls(
    fakesmtp_factory: FakeSMTPFactory, cert: tuple[str, str]
) -> None:
    server = fakesmtp_factory(tls_cert=cert[0], tls_key=cert[1])
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.sendmail("s@example.com", ["r@example.com"], make_message())
    assert server.messages()[0].tls is False


def test_require_tls_refuses_mail_before_starttls_with_530(
    fakesmtp_factory: FakeSMTPFactory, cert: tuple[str, str]
) -> None:
    server = fakesmtp_factory(tls_cert=cert[0], tls_key=cert[1], require_tls=True)
    with smtplib.SMTP("localhost", server.port, timeout=5) as client:
        client.ehlo()
        assert client.mail("s@example.com") == (
            replies.TLS_REQUIRED.code,
            replies.TLS_REQUIRED.text.encode(),
        )
        client.starttls(context=client_tls_context(cert[0]))
        client.ehlo()
        assert client.mail("s@example.com")[0] == 250


def test_implicit_tls_speaks_tls_from_the_first_byte(
    fakesmtp_factory: FakeSMTPFactory, cert: tuple[str, str]
) -> None:
    server = fakesmtp_factory(tls_cert=cert[0], tls_key=cert[1], implicit_tls=True)
    with smtplib.SMTP_SSL(
        "localhost", server.port, timeout=5, context=client_tls_context(cert[0])
    ) as client:
        client.ehlo()
        assert not client.has_extn("starttls")
        client.sendmail("s@example.com", ["r@example.com"], make_message())
    assert server.messages()[0].tls is True
    # A plain-text client gets no greeting: the server waits for a TLS hello.
    with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionResetError)):
        smtplib.SMTP(server.host, server.port, timeout=0.5)


def test_certificate_verification_fails_without_the_ca(
    fakesmtp_factory: FakeSMTPFactory, cert: tuple[str, str]
) -> None:
    server = fakesmtp_factory(tls_cert=cert[0], tls_key=cert[1], implicit_tls=True)
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL("localhost", server.port, timeout=5, context=ssl.create_default_context())
    # The failed handshake did not hurt the server.
    with smtplib.SMTP_SSL(
        "localhost", server.port, timeout=5, context=client_tls_context(cert[0])
    ) as client:
        assert client.noop()[0] == 250


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_with_good_credentials_is_accepted_and_recorded(
    fakesmtp_factory: FakeSMTPFactory, mechanism: str
) -> None:
    server = fakesmtp_factory(auth=("alice", "s3cret"))
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.ehlo()
        assert mechanism in client.esmtp_features["auth"].split()
        client.user, client.password = "alice", "s3cret"
        method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        assert client.auth(mechanism, method)[0] == replies.AUTH_SUCCESS.code
        client.sendmail("s@example.com", ["r@example.com"], make_message())
    assert server.messages()[0].auth_user == "alice"


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("mallory", "s3cret")])
def test_auth_with_bad_credentials_gets_535(
    fakesmtp_factory: FakeSMTPFactory, user: str, password: str
) -> None:
    server = fakesmtp_factory(auth=("alice", "s3cret"))
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.login(user, password)
        assert info.value.smtp_code == replies.AUTH_INVALID.code


def test_mail_before_auth_gets_530(fakesmtp_factory: FakeSMTPFactory) -> None:
    server = fakesmtp_factory(auth=("alice", "s3cret"))
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.ehlo()
        assert client.mail("s@example.com") == (
            replies.AUTH_REQUIRED.code,
            replies.AUTH_REQUIRED.text.encode(),
        )
    assert server.messages() == []


def test_without_auth_configured_any_credentials_are_accepted(fakesmtp: FakeSMTPServer) -> None:
    with smtplib.SMTP(fakesmtp.host, fakesmtp.port, timeout=5) as client:
        client.login("anyone", "anything")
        client.sendmail("s@example.com", ["r@example.com"], make_message())
    assert fakesmtp.messages()[0].auth_user == "anyone"


def test_auth_plain_with_garbage_is_a_syntax_error_not_a_crash(fakesmtp: FakeSMTPServer) -> None:
    with smtplib.SMTP(fakesmtp.host, fakesmtp.port, timeout=5) as client:
        client.ehlo()
        assert client.docmd("AUTH", "PLAIN !!notbase64")[0] == 501
        no_separators = base64.b64encode(b"just-a-name").decode()
        assert client.docmd("AUTH", "PLAIN " + no_separators)[0] == 501
        assert client.noop()[0] == 250


def test_auth_over_starttls_with_required_tls(
    fakesmtp_factory: FakeSMTPFactory, cert: tuple[str, str]
) -> None:
    server = fakesmtp_factory(
        tls_cert=cert[0], tls_key=cert[1], require_tls=True, auth=("alice", "s3cret")
    )
    with smtplib.SMTP("localhost", server.port, timeout=5) as client:
        client.starttls(context=client_tls_context(cert[0]))
        client.login("alice", "s3cret")
        client.sendmail("s@example.com", ["r@example.com"], make_message())
    [message] = server.messages()
    assert (message.tls, message.auth_user) == (True, "alice")

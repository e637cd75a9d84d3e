"""Certificates from a provider callable, and WARNINGs before a certificate expires.

A provider (a vault, say) returns `ClientCertificate` objects: it is asked again
when the certificate nears expiry (at most once per ``provider_interval``) and
after the token endpoint refused the current one; what it returns that is not a
`ClientCertificate`, or an exception it raises, keeps the current certificate
(and logs the exception's type, never its message). A `CertificateWatch`
WARNs 24 h and 1 h before expiry, once each. Time here is the test kit's
`FakeClock` for the watch's timer, and `FakeNow` for the wall-clock date.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Any

import pytest
import requests
from clients import Client
from rotating import (
    FAST,
    ServiceKeyFile,
    cert_of,
    client_certificate,
    xsuaa_credentials,
)

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import CertificateError, ClientCertificate
from mtls_auth._rotation import CertificateWatch, Loaded
from mtls_auth._sources import BindingSource
from mtls_auth.testing import PKI, Credential, FakeClock, TokenServer
from mtls_auth.testing.plugin import CLIENT_ID

UTC = datetime.timezone.utc


class FakeNow:
    """A wall clock (aware UTC datetime) that moves only when told to.

    Not the kit's `FakeClock`: the watch reads the date of now as an aware
    datetime, and these tests set it freely, backwards too (to a moment
    relative to another certificate's expiry).
    """

    def __init__(self, moment: datetime.datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime.datetime:
        return self.moment


# -- 5. a provider callable ---------------------------------------------------------------------


class Provider:
    """A certificate source such as a vault: returns whatever `.next` holds."""

    def __init__(self, first: Any) -> None:
        self.next = first
        self.calls = 0
        self.error: BaseException | None = None

    def __call__(self) -> Any:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.next


@pytest.fixture(scope="module")
def cert_short(mtls_pki: PKI, client_common_name: str) -> Credential:
    """Same subject, expiring in two hours: inside the 24 h rotate window."""
    return mtls_pki.issue_client(
        client_common_name,
        not_after=datetime.datetime.now(UTC) + datetime.timedelta(hours=2),
    )


def provider_session(
    server: TokenServer, provider: Provider, **options: Any
) -> tuple[mrequests.MtlsOAuth2, requests.Session]:
    auth = mrequests.MtlsOAuth2(
        server.token_url, CLIENT_ID, provider, verify=server.ca_pem, **options
    )
    session = requests.Session()
    session.trust_env = False
    session.auth = auth
    session.mount("https://", auth.adapter())
    return auth, session


def fake_timed_watch(auth: Any, provider: Provider, timer: FakeClock) -> None:
    """Give the auth's watch a clock the test moves (as TokenClient configures it)."""
    client = auth._client
    assert client.watch is not None
    client.watch = CertificateWatch(
        Loaded(client.state.certificate),
        provider=provider,
        interval=FAST,
        provider_interval=60.0,
        timer=timer,
    )


def test_provider_is_called_again_when_the_certificate_nears_expiry(
    mtls_server: TokenServer,
    cert_short: Credential,
    rotated_certificate: Credential,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mtls_auth")
    provider = Provider(client_certificate(cert_short))
    auth, session = provider_session(mtls_server, provider, check_interval=FAST)
    timer = FakeClock(1000.0)
    fake_timed_watch(auth, provider, timer)
    try:
        assert provider.calls == 1
        assert session.get(mtls_server.resource_url).status_code == 200
        timer.advance(1)
        assert session.get(mtls_server.resource_url).status_code == 200
        assert provider.calls == 1  # rate-limited: at most once a provider_interval
        assert cert_of(auth) == cert_short.thumbprint

        provider.next = client_certificate(rotated_certificate)
        timer.advance(61)
        assert session.get(mtls_server.resource_url).status_code == 200
        assert provider.calls == 2
        assert cert_of(auth) == rotated_certificate.thumbprint
        assert mtls_server.token_requests[-1].thumbprint == rotated_certificate.thumbprint
        assert mtls_server.resource_requests[-1].thumbprint == rotated_certificate.thumbprint

        timer.advance(121)  # B has 7 days left: no need to ask again
        assert session.get(mtls_server.resource_url).status_code == 200
        assert provider.calls == 2
    finally:
        session.close()
        auth.close()
    watch_warnings = [r for r in caplog.records if "watching its binding" in r.getMessage()]
    assert len(watch_warnings) == 1  # the 24 h warning for the short certificate, once
    assert cert_short.subject in watch_warnings[0].getMessage()


@pytest.mark.parametrize("client", ["requests", "httpx-async"], indirect=True)
def test_provider_is_called_again_after_a_rejection(
    client: Client,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    rotated_certificate: Credential,
) -> None:
    provider = Provider(client_certificate(mtls_client_certificate))
    auth = client.auth(certificate=provider, key=None)
    # One session (and pool) throughout, presenting the auth's certificate.
    with client.session(auth, present="auth", trust_env=False) as session:
        assert session.call().unwrap() == 200
        provider.next = client_certificate(rotated_certificate)
        mtls_server.revoke_certificate(mtls_client_certificate.thumbprint)
        # requests: two in a row; httpx async: ten concurrent coroutines.
        count = 10 if client.is_async else 2
        results = session.call_many(
            [mtls_server.resource_url] * count, count if client.is_async else 1
        )
        assert [result.unwrap() for result in results] == [200] * count
    # Once at construction, once after the token endpoint refused A.
    assert provider.calls == 2
    assert cert_of(auth) == rotated_certificate.thumbprint
    assert mtls_server.token_requests[-1].thumbprint == rotated_certificate.thumbprint
    assert mtls_server.resource_requests[-1].thumbprint == rotated_certificate.thumbprint


def test_provider_returning_something_else_is_a_clear_error(
    mtls_server: TokenServer, mtls_client_certificate: Credential
) -> None:
    with pytest.raises(CertificateError, match=r"must return a ClientCertificate, not str"):
        mrequests.MtlsOAuth2(
            mtls_server.token_url,
            CLIENT_ID,
            Provider(mtls_client_certificate.chain_pem),
            verify=mtls_server.ca_pem,
        )
    with pytest.raises(CertificateError, match=r"must return a ClientCertificate, not Credential"):
        mhttpx.MtlsOAuth2(
            mtls_server.token_url,
            CLIENT_ID,
            Provider(mtls_client_certificate),
            verify=mtls_server.ca_pem,
        )


def test_provider_returning_something_else_later_keeps_the_certificate(
    mtls_server: TokenServer, cert_short: Credential, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mtls_auth")
    provider = Provider(client_certificate(cert_short))
    auth, session = provider_session(mtls_server, provider, check_interval=FAST)
    timer = FakeClock(1000.0)
    fake_timed_watch(auth, provider, timer)
    try:
        assert session.get(mtls_server.resource_url).status_code == 200
        provider.next = cert_short.chain_pem  # PEM text, not a ClientCertificate
        timer.advance(61)
        assert session.get(mtls_server.resource_url).status_code == 200
        assert provider.calls == 2
    finally:
        session.close()
        auth.close()
    assert cert_of(auth) == cert_short.thumbprint
    assert any(
        "must return a ClientCertificate, not str" in r.getMessage()
        and r.levelno == logging.WARNING
        for r in caplog.records
    )


class VaultUnavailable(Exception):
    """What a vault client raises when the vault is sealed or unreachable."""


def test_provider_failing_near_expiry_keeps_the_current_certificate(
    mtls_server: TokenServer, cert_short: Credential, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mtls_auth")
    provider = Provider(client_certificate(cert_short))
    auth, session = provider_session(mtls_server, provider, check_interval=FAST)
    timer = FakeClock(1000.0)
    fake_timed_watch(auth, provider, timer)
    try:
        assert session.get(mtls_server.resource_url).status_code == 200
        provider.error = VaultUnavailable("vault is sealed")
        timer.advance(61)
        # The current certificate has two hours left: the request must not fail.
        assert session.get(mtls_server.resource_url).status_code == 200
    finally:
        session.close()
        auth.close()
    assert provider.calls == 2
    assert cert_of(auth) == cert_short.thumbprint
    # The provider's own message may carry its secrets: only the type is logged.
    assert any("VaultUnavailable" in r.getMessage() for r in caplog.records)
    assert not any("vault is sealed" in r.getMessage() for r in caplog.records)


# -- 6. WARNINGs 24 h and 1 h before expiry ---------------------------------------------------


def expiry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("mtls_auth.")
        and r.levelno == logging.WARNING
        and "expires in" in r.getMessage()
    ]


def test_expiry_warnings_at_24h_and_1h_once_each(
    mtls_client_certificate: Credential, caplog: pytest.LogCaptureFixture
) -> None:
    certificate = client_certificate(mtls_client_certificate)
    expiry = certificate.not_after
    timer = FakeClock(1000.0)
    now = FakeNow(expiry - datetime.timedelta(hours=30))
    watch = CertificateWatch(Loaded(certificate), interval=5.0, timer=timer, now=now)
    caplog.set_level(logging.DEBUG, logger="mtls_auth")

    def poll_at(left: datetime.timedelta) -> list[str]:
        caplog.clear()
        now.moment = expiry - left
        timer.advance(6)
        assert watch.poll() is None
        return expiry_warnings(caplog)

    hours = datetime.timedelta(hours=1)
    assert poll_at(30 * hours) == []
    assert poll_at(25 * hours) == []
    at_24h = poll_at(23 * hours + datetime.timedelta(minutes=59))
    assert len(at_24h) == 1
    assert "23:59:00" in at_24h[0]
    assert mtls_client_certificate.subject in at_24h[0] or certificate.subject in at_24h[0]
    assert "rotate it and restart" in at_24h[0]  # no binding, no provider to watch
    assert poll_at(23 * hours) == []
    assert poll_at(2 * hours) == []
    assert poll_at(61 * datetime.timedelta(minutes=1)) == []
    at_1h = poll_at(59 * datetime.timedelta(minutes=1))
    assert len(at_1h) == 1
    assert "0:59:00" in at_1h[0]
    assert poll_at(30 * datetime.timedelta(minutes=1)) == []
    assert poll_at(datetime.timedelta(minutes=1)) == []


def test_expiry_warnings_need_no_due_check_and_restart_for_a_new_certificate(
    tmp_path: Path,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    rotated_certificate: Credential,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rate limit: not due, no stat, no warning; a rotated certificate is warned about anew."""
    binding = ServiceKeyFile(tmp_path / "service-key.json")
    binding.write(xsuaa_credentials(mtls_server, mtls_client_certificate))
    source = BindingSource.from_input(binding.path)
    parsed = source.read()
    first = ClientCertificate.from_pem(parsed.certificate, parsed.key)
    timer = FakeClock(1000.0)
    now = FakeNow(first.not_after - datetime.timedelta(minutes=30))
    watch = CertificateWatch(
        Loaded(first, parsed), source=source, interval=5.0, timer=timer, now=now
    )
    caplog.set_level(logging.DEBUG, logger="mtls_auth")

    assert not watch.due()
    assert watch.poll() is None  # not due: nothing looked at, nothing logged
    assert expiry_warnings(caplog) == []

    timer.advance(5)
    assert watch.due()
    assert watch.poll() is None
    both = expiry_warnings(caplog)
    assert len(both) == 2  # 24 h and 1 h crossed at once (the process started late)
    assert all("watching its binding for a replacement" in m for m in both)
    # Within an hour of expiry the binding is checked every second.
    timer.advance(1)
    assert watch.due()

    caplog.clear()
    binding.write(xsuaa_credentials(mtls_server, rotated_certificate))
    second_expiry = client_certificate(rotated_certificate).not_after
    now.moment = second_expiry - datetime.timedelta(hours=3)
    loaded = watch.poll()
    assert loaded is not None
    assert loaded.certificate.thumbprint == rotated_certificate.thumbprint
    assert any("client certificate rotated" in r.getMessage() for r in caplog.records)
    rotated_warnings = expiry_warnings(caplog)
    assert len(rotated_warnings) == 1  # B is within 24 h (per the fake clock), not 1 h
    timer.advance(6)
    assert watch.poll() is None
    assert len(expiry_warnings(caplog)) == 1


def test_near_expiry_checks_are_never_rarer_than_the_configured_interval(
    mtls_client_certificate: Credential,
) -> None:
    certificate = client_certificate(mtls_client_certificate)
    timer = FakeClock(1000.0)
    now = FakeNow(certificate.not_after - datetime.timedelta(minutes=30))
    watch = CertificateWatch(Loaded(certificate), interval=FAST, timer=timer, now=now)
    timer.advance(FAST)
    assert watch.due()
    assert watch.poll() is None
    timer.advance(FAST)
    assert watch.due()  # due again after `interval`, as far from expiry

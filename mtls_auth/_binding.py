"""Binding shapes: what XSUAA, Identity Services, Credential Store and generic ones look like.

A *binding* is the credentials block SAP BTP hands an application (where it
comes from, files, directories or `VCAP_SERVICES`, is `_sources`'s concern).
`parse_credentials` recognises the shapes mTLS needs and says plainly what is
wrong with the others::

    XSUAA x509           clientid, certificate, key, certurl (or url), credential-type,
                         uaadomain, xsappname
    Identity Services    clientid, certificate, key, url (or token_endpoint), app_tid,
    (IAS, "identity")    domains, credential-type X509_GENERATED / X509_PROVIDED
    Credential Store     username, certificate, key, oauth_token_url, url,
    (oauth:mtls)         expires_at, encryption.{client_private_key,server_public_key}
    generic              client_id, certificate, key, token_url

Pure parsing: nothing here reads a file or the network. No message here ever
contains a credential value: errors name fields and sources only.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ._errors import BindingError
from ._redact import Secret, guarded, safe_repr
from ._urls import https_url

__all__ = ["Binding", "credstore_api_url", "loads_json", "parse_credentials", "unwrap"]

logger = logging.getLogger(__name__)

_FRACTION = re.compile(r"^(.*?)\.(\d+)(.*)$")
_X509_TYPES = {"x509", "x509_generated", "x509_provided"}
_SECRET_TYPES = {"binding-secret", "instance-secret"}
#: Host suffixes of SAP Identity Services tenants.
_IAS_HOSTS = (".accounts.ondemand.com", ".accounts400.ondemand.com", ".accounts.cloud.sap")


@safe_repr
@dataclass(frozen=True)
class Binding:
    """The parts of a binding that mTLS token retrieval needs.

    `kind` is ``"xsuaa"``, ``"credstore"`` or ``"generic"``. `certificate` is
    PEM text. The private key and the Credential Store payload keys are kept
    sealed in `Secret` holders (an object walked by an error reporter shows
    ``<redacted>``); `key` and `encryption` read them.
    """

    kind: str
    client_id: str
    token_url: str
    certificate: str = field(repr=False)
    sealed_key: Secret = field(repr=False, compare=False)
    url: str | None = None
    expires_at: datetime.datetime | None = None
    sealed_encryption: Secret = field(default_factory=lambda: Secret({}), repr=False, compare=False)
    source: str = "mapping"
    #: XSUAA's ``uaadomain``: the identity zone's domain, for discovery checks.
    domain: str | None = None
    #: The browser-facing authorization endpoint (``url``, never ``certurl``).
    authorization_url: str | None = None
    #: SAP Identity Services: the application's tenant id.
    app_tid: str | None = None
    #: SAP Identity Services: the ``domains`` the tenant's hosts lie under.
    other_domains: tuple[str, ...] = ()

    @property
    def domains(self) -> tuple[str, ...]:
        """The binding's own domains: ``uaadomain``/``domains`` and the hosts of its URLs."""
        hosts = [self.domain or "", *self.other_domains]
        for url in (self.url, self.token_url):
            try:
                hosts.append(urlsplit(url or "").hostname or "")
            except ValueError:
                continue
        return tuple(h for h in hosts if h)

    @property
    def key(self) -> str:
        """The private key, PEM text."""
        key: str = self.sealed_key.value
        return key

    @property
    def encryption(self) -> Mapping[str, str]:
        """The Credential Store ``encryption`` block (payload keys), or empty."""
        block: Mapping[str, str] = self.sealed_encryption.value
        return block

    @property
    def needs_namespace(self) -> bool:
        return self.kind == "credstore"

    def __reduce__(self) -> Any:
        raise TypeError("a Binding holds a private key and cannot be pickled")


# -- recognising the shapes -------------------------------------------------------------


def _text(credentials: Mapping[str, Any], name: str) -> str | None:
    value = credentials.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BindingError(f"binding field {name!r} must be a string, not {type(value).__name__}")
    return value


def _require(credentials: Mapping[str, Any], names: list[str], what: str, where: str) -> None:
    missing = [name for name in names if not _text(credentials, name)]
    if missing:
        raise BindingError(f"{what} in {where} lacks {', '.join(repr(n) for n in missing)}")


def unwrap(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The credentials block of a service key, VCAP entry or binding.json."""
    inner = data.get("credentials")
    if isinstance(inner, Mapping) and not (
        "clientid" in data or "oauth_token_url" in data or "certificate" in data
    ):
        return inner
    return data


def _token_url(url: str, where: str, field: str) -> str:
    """`url` if it is a usable https token URL, else a BindingError naming `field`."""
    https_url(url, f"the {field!r} of the binding in {where}", BindingError)
    return url


def _cert_token_url(credentials: Mapping[str, Any], where: str) -> str:
    certurl = _text(credentials, "certurl")
    if certurl:
        return _token_url(certurl.rstrip("/") + "/oauth/token", where, "certurl")
    url = _text(credentials, "url")
    if not url:
        raise BindingError(
            f"XSUAA binding in {where} has neither 'certurl' nor 'url': "
            "cannot tell the token endpoint"
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        raise BindingError(f"XSUAA binding in {where} has an unparseable 'url'") from None
    if not host:
        raise BindingError(f"XSUAA binding in {where} has a 'url' without a host")
    if ".authentication.cert." not in f".{host}" and ".authentication." in f".{host}":
        host = host.replace("authentication.", "authentication.cert.", 1)
    netloc = host if port is None else f"{host}:{port}"
    token_url = urlunsplit(("https", netloc, parts.path.rstrip("/") + "/oauth/token", "", ""))
    return _token_url(token_url, where, "url")


def _parse_xsuaa(credentials: Mapping[str, Any], where: str) -> Binding:
    kind = (_text(credentials, "credential-type") or "").strip()
    lowered = kind.lower()
    if lowered in _SECRET_TYPES or (
        not kind and credentials.get("clientsecret") and not credentials.get("key")
    ):
        raise BindingError(
            f"XSUAA binding in {where} uses a client secret (credential-type "
            f"{kind or 'binding-secret'!r}); mTLS needs an x509 binding. Create one with "
            '`cf bind-service APP XSUAA -c \'{"credential-type": "x509"}\'` or a service key '
            '`cf create-service-key XSUAA KEY -c \'{"credential-type": "x509"}\'` '
            "(Kubernetes: parameters: {credential-type: x509} in the ServiceBinding), "
            "and enable x509 in xs-security.json (oauth2-configuration.credential-types)"
        )
    if lowered == "x509_attested":
        raise BindingError(
            f"XSUAA binding in {where} is X509_ATTESTED: it carries no private key "
            "('key' is missing), so the certificate must come from the platform's "
            "attestation; pass certificate= and key= yourself or use credential-type x509"
        )
    if kind and lowered not in _X509_TYPES:
        raise BindingError(
            f"XSUAA binding in {where} has credential-type {kind!r}, which mtls-auth "
            "does not know; expected x509, X509_GENERATED or X509_PROVIDED"
        )
    _require(credentials, ["clientid", "certificate", "key"], "XSUAA x509 binding", where)
    return Binding(
        kind="xsuaa",
        client_id=_text(credentials, "clientid") or "",
        token_url=_cert_token_url(credentials, where),
        certificate=_text(credentials, "certificate") or "",
        sealed_key=Secret(_text(credentials, "key") or ""),
        url=_text(credentials, "url"),
        source=where,
        domain=_text(credentials, "uaadomain"),
        authorization_url=_below(_text(credentials, "url"), "/oauth/authorize"),
    )


def _below(base: str | None, path: str) -> str | None:
    return None if not base else base.rstrip("/") + path


def _looks_like_ias(credentials: Mapping[str, Any]) -> bool:
    """SAP Identity Services credentials, as opposed to XSUAA's (both have clientid)."""
    if any(name in credentials for name in ("uaadomain", "xsappname", "identityzone")):
        return False
    if any(name in credentials for name in ("app_tid", "domains", "authorization_endpoint")):
        return True
    try:
        host = urlsplit(_text(credentials, "url") or "").hostname or ""
    except ValueError:
        return False
    return any(f".{host}".endswith(suffix) for suffix in _IAS_HOSTS)


def _parse_ias(credentials: Mapping[str, Any], where: str) -> Binding:
    kind = (_text(credentials, "credential-type") or "").strip()
    lowered = kind.lower()
    if lowered == "x509_attested":
        raise BindingError(
            f"SAP Identity Services binding in {where} is X509_ATTESTED (zero-trust "
            "identity): it carries no private key, the certificate comes from SAP's "
            "zero-trust identity service, which mtls-auth does not support. Bind with "
            "credential-type X509_GENERATED (or X509_PROVIDED), or pass certificate= and "
            "key= yourself"
        )
    if (
        lowered in _SECRET_TYPES
        or lowered in ("secret", "none")
        or (credentials.get("clientsecret") and not credentials.get("key"))
    ):
        raise BindingError(
            f"SAP Identity Services binding in {where} uses a client secret; mTLS needs a "
            "certificate. Bind with `cf bind-service APP IAS -c "
            '\'{"credential-type": "X509_GENERATED"}\'` (Kubernetes: parameters: '
            "{credential-type: X509_GENERATED} in the ServiceBinding)"
        )
    if kind and lowered not in _X509_TYPES:
        raise BindingError(
            f"SAP Identity Services binding in {where} has credential-type {kind!r}, which "
            "mtls-auth does not know; expected X509_GENERATED or X509_PROVIDED"
        )
    _require(
        credentials, ["clientid", "certificate", "key"], "SAP Identity Services binding", where
    )
    url = _text(credentials, "url")
    endpoint = _text(credentials, "token_endpoint")
    if not endpoint and not url:
        raise BindingError(
            f"SAP Identity Services binding in {where} has neither 'url' nor "
            "'token_endpoint': cannot tell the token endpoint"
        )
    token_url = endpoint or (url or "").rstrip("/") + "/oauth2/token"
    domains = credentials.get("domains")
    return Binding(
        kind="ias",
        client_id=_text(credentials, "clientid") or "",
        token_url=_token_url(token_url, where, "token_endpoint" if endpoint else "url"),
        certificate=_text(credentials, "certificate") or "",
        sealed_key=Secret(_text(credentials, "key") or ""),
        url=url,
        source=where,
        authorization_url=_text(credentials, "authorization_endpoint")
        or _below(url, "/oauth2/authorize"),
        app_tid=_text(credentials, "app_tid"),
        other_domains=tuple(d for d in domains if isinstance(d, str))
        if isinstance(domains, list)
        else (),
    )


def _parse_expires_at(value: str | None, where: str) -> datetime.datetime | None:
    if not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python 3.9's fromisoformat wants 0, 3 or 6 fraction digits ("09:24:03.3Z").
    fraction = _FRACTION.match(text)
    if fraction is not None:
        head, digits, zone = fraction.groups()
        text = f"{head}.{(digits + '000000')[:6]}{zone}"
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        logger.warning("Credential Store binding in %s: unreadable expires_at", where)
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment


def _parse_credstore(credentials: Mapping[str, Any], where: str) -> Binding:
    if credentials.get("password") and not credentials.get("key"):
        raise BindingError(
            f"Credential Store binding in {where} uses basic authentication "
            "('password'); mTLS needs a binding created with authentication type "
            "oauth:mtls (the instance's 'authentication': {'type': 'oauth:mtls'})"
        )
    _require(
        credentials,
        ["username", "certificate", "key", "oauth_token_url"],
        "Credential Store oauth:mtls binding",
        where,
    )
    encryption = credentials.get("encryption")
    keys: dict[str, str] = {}
    if isinstance(encryption, Mapping):
        for name in ("client_private_key", "server_public_key"):
            value = encryption.get(name)
            if isinstance(value, str) and value:
                keys[name] = value
    expires_at = _parse_expires_at(_text(credentials, "expires_at"), where)
    if expires_at is not None and expires_at <= datetime.datetime.now(datetime.timezone.utc):
        logger.warning(
            "Credential Store binding in %s expired at %s: its certificate is no longer "
            "accepted; rebind the service or recreate the service key",
            where,
            expires_at.isoformat(),
        )
    return Binding(
        kind="credstore",
        client_id=_text(credentials, "username") or "",
        token_url=_token_url(_text(credentials, "oauth_token_url") or "", where, "oauth_token_url"),
        certificate=_text(credentials, "certificate") or "",
        sealed_key=Secret(_text(credentials, "key") or ""),
        url=_text(credentials, "url"),
        expires_at=expires_at,
        sealed_encryption=Secret(keys),
        source=where,
    )


def _parse_generic(credentials: Mapping[str, Any], where: str) -> Binding:
    _require(credentials, ["client_id", "certificate", "key"], "binding", where)
    token_url = _text(credentials, "token_url") or _text(credentials, "tokenurl")
    if not token_url:
        raise BindingError(f"binding in {where} lacks 'token_url'")
    _token_url(token_url, where, "token_url")
    return Binding(
        kind="generic",
        client_id=_text(credentials, "client_id") or "",
        token_url=token_url,
        certificate=_text(credentials, "certificate") or "",
        sealed_key=Secret(_text(credentials, "key") or ""),
        url=_text(credentials, "url"),
        source=where,
    )


@guarded
def parse_credentials(data: Mapping[str, Any], where: str = "mapping") -> Binding:
    """Recognise an XSUAA, Credential Store or generic mTLS binding."""
    if not isinstance(data, Mapping):
        raise BindingError(f"binding in {where} must be a JSON object, not {type(data).__name__}")
    credentials = unwrap(data)
    if "oauth_token_url" in credentials or (
        "username" in credentials and "clientid" not in credentials
    ):
        return _parse_credstore(credentials, where)
    if "clientid" in credentials:
        if _looks_like_ias(credentials):
            return _parse_ias(credentials, where)
        return _parse_xsuaa(credentials, where)
    if "client_id" in credentials:
        return _parse_generic(credentials, where)
    fields = ", ".join(sorted(str(k) for k in credentials)[:12]) or "nothing"
    raise BindingError(
        f"binding in {where} is neither XSUAA nor SAP Identity Services (clientid) nor "
        f"Credential Store (username, oauth_token_url); it has: {fields}"
    )


def loads_json(text: str, where: str) -> Any:
    failure: str | None = None
    try:
        return json.loads(text)
    except ValueError as exc:
        # The position is safe to show; the text around it may be a key.
        failure = f"line {getattr(exc, 'lineno', '?')}, column {getattr(exc, 'colno', '?')}"
    except RecursionError:
        failure = "nested too deeply"
    # Raised outside the except clause: JSONDecodeError.doc holds the whole
    # text, key included, and would stay reachable as __context__.
    raise BindingError(f"{where} is not valid JSON ({failure})")


def credstore_api_url(binding: Binding | None, what: str) -> str:
    """The credentials API URL of a Credential Store binding; `what` needs one."""
    if binding is None or binding.kind != "credstore" or not binding.url:
        raise BindingError(f"{what} needs a Credential Store oauth:mtls binding with a url")
    return binding.url

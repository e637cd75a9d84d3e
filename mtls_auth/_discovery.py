"""OpenID discovery: the mTLS token endpoint from ``/.well-known/openid-configuration``.

The one network call outside the token senders, so it carries the same rules:
https only, the binding's trust (`verify`) and client certificate, a bounded
document, and no redirects at all (a redirect from https to http, or to
another host, would let whoever answers it choose the token URL). The token
endpoint it finds must be https and lie under the binding's own domain.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any, NamedTuple
from urllib.parse import urlunsplit

from ._binding import loads_json
from ._errors import BindingError, clean_text
from ._urls import https_url, normal_host

__all__ = ["Discovered", "discover", "discover_token_endpoint", "under"]

_MAX_DOCUMENT_BYTES = 1 << 20


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: the 3xx answer surfaces as an HTTPError."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def under(host: str, domains: Iterable[str]) -> bool:
    """Whether `host` is one of `domains` or a subdomain of one (normal forms)."""
    host = normal_host(host)
    for domain in domains:
        domain = normal_host(domain)
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


class Discovered(NamedTuple):
    """What discovery found: the mTLS token endpoint and the browser's login endpoint."""

    token_endpoint: str
    authorization_endpoint: str | None


def discover_token_endpoint(
    base_url: str,
    context: ssl.SSLContext,
    *,
    domains: Iterable[str] | None = None,
    timeout: float = 10.0,
) -> str:
    """The mTLS token endpoint from ``/.well-known/openid-configuration`` (see `discover`)."""
    return discover(base_url, context, domains=domains, timeout=timeout).token_endpoint


def discover(
    base_url: str,
    context: ssl.SSLContext,
    *,
    domains: Iterable[str] | None = None,
    timeout: float = 10.0,
) -> Discovered:
    """The endpoints from ``/.well-known/openid-configuration``.

    The token endpoint: ``mtls_endpoint_aliases.token_endpoint`` (RFC 8705
    section 5), else ``token_endpoint``. The authorization endpoint: the
    top-level ``authorization_endpoint`` (browsers present no client
    certificate), when there is one. Both must be https and their hosts one of
    `domains` (default: the host of `base_url`) or under one of them;
    redirects are refused.
    """
    checked = https_url(base_url, "the discovery base URL", BindingError)
    base = checked.parts
    if domains is None:
        domains = [checked.host]
    path = base.path.rstrip("/") + "/.well-known/openid-configuration"
    url = urlunsplit((base.scheme, base.netloc, path, "", ""))
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context), _NoRedirects()
    )
    # https only (checked above), so S310's file:// concern does not apply.
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    failure: str | None = None
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read(_MAX_DOCUMENT_BYTES)
    except urllib.error.HTTPError as exc:
        where = clean_text(exc.headers.get("Location"), 120) if exc.headers else None
        redirected = f" (a redirect to {where!r}: not followed)" if where else ""
        failure = f"answered HTTP {exc.code}{redirected}"
    except OSError as exc:
        failure = f"failed: {clean_text(str(exc), 200)}"
    if failure is not None:
        raise BindingError(f"OpenID discovery at {url} {failure}")
    document = loads_json(body.decode("utf-8", errors="replace"), f"OpenID configuration at {url}")
    if not isinstance(document, dict):
        raise BindingError(f"OpenID configuration at {url} is not a JSON object")
    aliases = document.get("mtls_endpoint_aliases")
    endpoint = aliases.get("token_endpoint") if isinstance(aliases, dict) else None
    endpoint = endpoint or document.get("token_endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith("https://"):
        raise BindingError(f"OpenID configuration at {url} names no https token endpoint")
    allowed = [d for d in domains if d]
    _ours(endpoint, f"the token endpoint discovered at {url}", allowed)
    login = document.get("authorization_endpoint")
    if isinstance(login, str) and login:
        _ours(login, f"the authorization endpoint discovered at {url}", allowed)
    else:
        login = None
    return Discovered(endpoint, login)


def _ours(endpoint: str, what: str, domains: list[str]) -> None:
    found = https_url(endpoint, what, BindingError)
    if not under(found.host, domains):
        raise BindingError(
            f"{what} is on {found.host!r}, outside the binding's own domain "
            f"({', '.join(sorted(set(domains))) or 'none known'}): refusing to use it"
        )

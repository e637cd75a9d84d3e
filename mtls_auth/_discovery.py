"""OpenID discovery: the mTLS token endpoint from ``/.well-known/openid-configuration``."""

from __future__ import annotations

import ssl
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from ._binding import loads_json
from ._errors import BindingError

__all__ = ["discover_token_endpoint"]

_MAX_DOCUMENT_BYTES = 1 << 20


def discover_token_endpoint(
    base_url: str, context: ssl.SSLContext, *, timeout: float = 10.0
) -> str:
    """The mTLS token endpoint from ``/.well-known/openid-configuration``.

    Prefers ``mtls_endpoint_aliases.token_endpoint`` (RFC 8705 section 5) and
    falls back to ``token_endpoint``.
    """
    parts = urlsplit(base_url)
    if parts.scheme != "https":
        raise BindingError(f"discovery needs an https:// URL, not {base_url!r}")
    path = parts.path.rstrip("/") + "/.well-known/openid-configuration"
    url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    # https only (checked above), so S310's file:// concern does not apply.
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            body = response.read(_MAX_DOCUMENT_BYTES)
    except OSError as exc:
        raise BindingError(f"OpenID discovery at {url} failed: {exc}") from exc
    document = loads_json(body.decode("utf-8", errors="replace"), f"OpenID configuration at {url}")
    if not isinstance(document, dict):
        raise BindingError(f"OpenID configuration at {url} is not a JSON object")
    aliases = document.get("mtls_endpoint_aliases")
    endpoint = aliases.get("token_endpoint") if isinstance(aliases, dict) else None
    endpoint = endpoint or document.get("token_endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith("https://"):
        raise BindingError(f"OpenID configuration at {url} names no https token endpoint")
    return endpoint

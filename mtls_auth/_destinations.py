"""Where a bearer token may go: https only, optionally only to `allowed_hosts`.

`Destinations.check_url` runs on every signed request, so its decisions are
cached per origin: the hot path is one regex match and one dict lookup. Hosts
are compared in one normal form on both sides (`_urls.normal_host`: lower case,
no trailing dot, IDNA A-labels), so ``bücher.example`` and
``xn--bcher-kva.example`` are the same host.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from urllib.parse import urlsplit

from ._errors import ArgumentError, InsecureTransportError, clean_text
from ._urls import is_loopback, normal_host

__all__ = ["Destinations"]

_ORIGIN = re.compile(r"[^/?#]*(?://[^/?#]*)?")


class Destinations:
    """Decides, per scheme and host, whether a request may carry the token."""

    __slots__ = ("_allow_http_loopback", "_allowed", "_origins", "_seen")

    def __init__(self, allowed_hosts: Collection[str] | None, allow_http_loopback: bool) -> None:
        if isinstance(allowed_hosts, str):
            allowed_hosts = [allowed_hosts]
        if allowed_hosts is not None and not all(isinstance(h, str) for h in allowed_hosts):
            raise ArgumentError("allowed_hosts must be host names (strings)")
        self._allowed = (
            None if allowed_hosts is None else frozenset(_normal_pattern(h) for h in allowed_hosts)
        )
        self._allow_http_loopback = allow_http_loopback
        # Decisions are cached: the hot path is one dict lookup.
        self._seen: dict[tuple[str, str], bool] = {}
        # ...keyed by the URL's "scheme://netloc" text for check_url, so a URL
        # is parsed once per distinct origin, not once per request.
        self._origins: dict[str, tuple[str, str]] = {}

    def check(self, scheme: str, host: str) -> None:
        ok = self._seen.get((scheme, host))
        if ok is None:
            ok = self._decide(scheme, host)
            if len(self._seen) < 1024:
                self._seen[(scheme, host)] = ok
        if not ok:
            self._refuse(scheme, host)

    def check_url(self, url: str) -> None:
        # The origin text: everything before the path, query or fragment (so
        # userinfo tricks such as "https://a.com@b.com/" stay in the key).
        match = _ORIGIN.match(url)
        origin = match.group() if match else url
        known = self._origins.get(origin)
        if known is None:
            try:
                parts = urlsplit(url)
                known = (parts.scheme.lower(), parts.hostname or "")
            except ValueError:
                known = ("malformed", "")
            if len(self._origins) < 1024:
                self._origins[origin] = known
        self.check(*known)

    def check_routed_token_url(self, url: str) -> None:
        """A token URL routed to a tenant must be among `allowed_hosts`, when they are set.

        The configured token URL is the operator's; one built from a subdomain
        that came with a request is checked like any destination.
        """
        if self._allowed is None:
            return
        host = normal_host(urlsplit(url).hostname or "")
        if not self._decide("https", host):
            raise InsecureTransportError(
                f"refusing to send a token request to {clean_text(host, 120)!r}: it is not in "
                "allowed_hosts (add the token endpoints' domain, for example "
                "'*.authentication.cert.eu10.hana.ondemand.com')"
            )

    def _decide(self, scheme: str, host: str) -> bool:
        host = normal_host(host)  # "API.example.com." is api.example.com
        if scheme == "http":
            if not (self._allow_http_loopback and is_loopback(host)):
                return False
        elif scheme != "https":
            return False
        if self._allowed is None:
            return True
        return any(
            host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:]))
            for allowed in self._allowed
        )

    def _refuse(self, scheme: str, host: str) -> None:
        if scheme == "malformed":
            raise InsecureTransportError("refusing to send the bearer token to a malformed URL")
        host = clean_text(host, 120) or ""
        if scheme == "http":
            hint = (
                " (allow_http_loopback=True permits http only to localhost/127.0.0.1/::1)"
                if is_loopback(host)
                else ""
            )
            raise InsecureTransportError(
                f"refusing to send the bearer token over plain http to {host!r}: use https{hint}"
            )
        if scheme != "https":
            raise InsecureTransportError(
                f"refusing to send the bearer token over {scheme or 'no scheme'}:// to {host!r}"
            )
        raise InsecureTransportError(
            f"refusing to send the bearer token to {host!r}: it is not in allowed_hosts"
        )


def _normal_pattern(pattern: str) -> str:
    """An `allowed_hosts` entry in normal form, keeping a leading ``*.`` wildcard."""
    if pattern.startswith("*."):
        return "*." + normal_host(pattern[2:])
    return normal_host(pattern)

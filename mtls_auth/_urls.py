"""The URLs and host names mtls-auth deals in: one check for what it sends to, one normal form.

`https_url` is the one check for the URLs the library itself sends to (token
endpoints, discovery): https, a host, a valid port, no credentials, nothing
that could end a header line. `normal_host` is the one form hosts are compared
in (lower case, no trailing dot, IDNA A-labels), so ``bücher.example`` and
``xn--bcher-kva.example`` are the same host.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple
from urllib.parse import SplitResult, urlsplit

from ._errors import ArgumentError, clean_text

__all__ = ["HttpsUrl", "https_url", "is_loopback", "normal_host"]

#: Characters no URL we send may contain: controls, spaces, and what would end
#: a header line.
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f\\]")
_MAX_URL = 8192


def normal_host(host: str) -> str:
    """`host` as compared everywhere: lower case, trailing dot gone, IDNA A-labels.

    A host IDNA cannot encode stays in lower case (it then matches only itself).
    """
    host = host.strip().rstrip(".").lower()
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


class HttpsUrl(NamedTuple):
    """A checked https URL: its parts, its normal host and its port (None: 443)."""

    parts: SplitResult
    host: str
    port: int | None


def https_url(url: object, what: str, error: type[ArgumentError] = ArgumentError) -> HttpsUrl:
    """Check a URL mtls-auth sends to: https, a host, a valid port, nothing odd in it.

    Raises `error` (an `ArgumentError`, so also a `ValueError`) naming `what`.
    """
    if not isinstance(url, str) or not url:
        raise error(f"{what} must be a non-empty https:// URL")
    shown = clean_text(url, 120)
    if len(url) > _MAX_URL or _FORBIDDEN.search(url):
        raise error(f"{what} {shown!r} contains spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise error(f"{what} {shown!r} is not a valid URL (host or port)") from None
    if parts.scheme != "https" or not host:
        raise error(
            f"{what} must be an https:// URL with a host (got {shown!r}): the client "
            "certificate and the token only travel over TLS"
        )
    if parts.username is not None or parts.password is not None:
        raise error(f"{what} {shown!r} carries a user name or password; remove them")
    return HttpsUrl(parts, normal_host(host), port)


def is_loopback(host: str) -> bool:
    # Only "localhost" and IP literals: a "*.localhost" name may well be
    # resolved through DNS (glibc with "hosts: files dns").
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

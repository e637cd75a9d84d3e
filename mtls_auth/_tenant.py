"""Which tenant a token is asked for: a subdomain, a zone id (``x-zid``) or an IAS ``app_tid``.

A multitenant application on SAP BTP asks the provider's authorization server
for tokens of its subscribers. XSUAA routes by host
(``https://<subdomain>.authentication.cert.<landscape>/oauth/token``) or by the
``x-zid`` header; SAP Identity Services by the ``app_tid`` form field. `Tenant`
holds one of the three, validated, and applies it to a token request.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ._errors import ArgumentError, clean_text
from ._redact import safe_repr

__all__ = ["Tenant"]

#: One DNS label: ASCII letters, digits and "-", 1 to 63, no "-" at either end.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
#: A zone id or app_tid: visible ASCII (GUIDs in practice), bounded.
_IDENTIFIER = re.compile(r"[\x21-\x7e]{1,128}", re.ASCII)


@safe_repr
@dataclass(frozen=True)
class Tenant:
    """Exactly one of `subdomain`, `zone_id` and `app_tid`; build it with `create`."""

    subdomain: str | None = None
    zone_id: str | None = None
    app_tid: str | None = None

    @classmethod
    def create(
        cls,
        subdomain: str | None = None,
        *,
        zone_id: str | None = None,
        app_tid: str | None = None,
    ) -> Tenant:
        """A validated tenant; a bad value is an `ArgumentError` (also a `ValueError`)."""
        values = {"subdomain": subdomain, "zone_id": zone_id, "app_tid": app_tid}
        given = [name for name, value in values.items() if value is not None]
        if len(given) != 1:
            raise TypeError(
                "for_tenant() takes exactly one of subdomain, zone_id= and app_tid= "
                f"({', '.join(given) or 'none'} given)"
            )
        if subdomain is not None:
            return cls(subdomain=_label(subdomain))
        if zone_id is not None:
            return cls(zone_id=_identifier(zone_id, "zone_id"))
        return cls(app_tid=_identifier(app_tid, "app_tid"))

    @property
    def key(self) -> tuple[str | None, str | None, str | None]:
        return (self.subdomain, self.zone_id, self.app_tid)

    def token_url(self, base: str) -> str:
        """`base` routed to this tenant: the host's first label replaced by the subdomain.

        Scheme, port and path stay; the new host lies under the same parent
        domain. A base whose host is an IP literal or has fewer than three labels
        cannot be routed by subdomain (`ArgumentError`).
        """
        if self.subdomain is None:
            return base
        parts = urlsplit(base)
        host = (parts.hostname or "").rstrip(".")
        labels = host.split(".")
        if _is_ip(host) or len(labels) < 3:
            found = "an IP address" if _is_ip(host) else f"{len(labels)} label(s)"
            raise ArgumentError(
                f"cannot route token URL {clean_text(base, 120)!r} to subdomain "
                f"{self.subdomain!r}: its host must be a name of three labels or more "
                f"(<subdomain>.authentication.cert.<landscape>), not {found}"
            )
        netloc = ".".join([self.subdomain, *labels[1:]])
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))

    def headers(self) -> dict[str, str]:
        return {"x-zid": self.zone_id} if self.zone_id is not None else {}

    def fields(self) -> list[tuple[str, str]]:
        return [("app_tid", self.app_tid)] if self.app_tid is not None else []

    def describe(self) -> str:
        if self.subdomain is not None:
            return f"tenant={self.subdomain!r}"
        if self.zone_id is not None:
            return f"zone_id={self.zone_id!r}"
        return f"app_tid={self.app_tid!r}"


def _label(value: object) -> str:
    if not isinstance(value, str):
        raise ArgumentError(f"subdomain must be a string, not {type(value).__name__}")
    label = value.lower()
    if not _LABEL.fullmatch(label):
        raise ArgumentError(
            f"subdomain {clean_text(value, 80)!r} is not a single DNS label (ASCII letters, "
            "digits and '-', 1 to 63 characters, not starting or ending with '-')"
        )
    return label


def _identifier(value: object, what: str) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        shown = clean_text(value, 60) if isinstance(value, str) else type(value).__name__
        raise ArgumentError(
            f"{what} {shown!r} must be 1 to 128 visible ASCII characters "
            "(no spaces or control characters)"
        )
    return value


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True

"""Tenants of the token server: the kit's domains, zone ids, and which tenant a request names.

An XSUAA-style multitenant application asks for a subscriber's tokens at
``https://<subdomain>.authentication.cert.<landscape>/oauth/token`` or with an
``x-zid`` header (a zone id); SAP Identity Services (IAS) takes an
``app_tid`` form field or ``https://<tenant>.accounts.<domain>/oauth2/token``.
The kit serves all of them on loopback under reserved ``.test`` names (RFC
6761)::

    TENANT_DOMAIN  authentication.cert.mtls.test   token endpoints, per subdomain
    LOGIN_DOMAIN   authentication.mtls.test        browser-facing login, per subdomain
    IAS_DOMAIN     accounts.mtls.test              IAS tenants

`TenantRegistry` holds the known tenants (subdomain <-> zone id); `tenant_hint`
reads what a request names, and the registry turns that into a `Tenant`.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .._redact import safe_repr

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "DEFAULT_IAS_TENANT",
    "IAS_DOMAIN",
    "LOGIN_DOMAIN",
    "TENANT_DOMAIN",
    "Tenant",
    "TenantHint",
    "TenantRegistry",
    "UnknownTenant",
    "default_zone_id",
    "host_name",
    "host_url",
    "label_under",
    "tenant_hint",
]

TENANT_DOMAIN = "authentication.cert.mtls.test"
LOGIN_DOMAIN = "authentication.mtls.test"
IAS_DOMAIN = "accounts.mtls.test"
#: The IAS tenant of `ias_service_key` and `TokenServer.ias_url` unless told otherwise.
DEFAULT_IAS_TENANT = "mtls-test"

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_MAX_ZONE_ID = 128


def check_subdomain(subdomain: str) -> str:
    """`subdomain` lower-cased, if it is one DNS label; else ValueError."""
    if not isinstance(subdomain, str):
        raise TypeError(f"a subdomain must be a string, not {type(subdomain).__name__}")
    label = subdomain.lower()
    if not _LABEL.fullmatch(label):
        raise ValueError(
            f"{subdomain!r} is not a subdomain: one DNS label of letters, digits and '-' "
            "(1 to 63, no '-' at either end)"
        )
    return label


def default_zone_id(subdomain: str) -> str:
    """The zone id a subdomain gets unless told otherwise: a UUID5, the same in every run.

    ``uuid5(NAMESPACE_DNS, "<subdomain>.authentication.cert.mtls.test")``.
    """
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{check_subdomain(subdomain)}.{TENANT_DOMAIN}"))


def host_name(host: str | None) -> str | None:
    """The name in a Host header (or URL netloc): port and trailing dot dropped, lower case."""
    if not host:
        return None
    try:
        name = urlsplit("//" + host.strip()).hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def label_under(host: str | None, domains: Iterable[str]) -> str | None:
    """The first label of `host` when the rest of it is one of `domains`, else None."""
    name = host_name(host)
    if name is None:
        return None
    label, _, rest = name.partition(".")
    if rest in tuple(domains) and _LABEL.fullmatch(label):
        return label
    return None


def host_url(base_url: str, host: str) -> str:
    """``https://<host>`` on the port of `base_url` (the server's), if it has one."""
    port = urlsplit(base_url).port
    return f"https://{host}" if port is None else f"https://{host}:{port}"


# -- tenants -------------------------------------------------------------------------------


@safe_repr
@dataclass(frozen=True)
class Tenant:
    """One tenant: its zone id and its subdomain (None for a zone only ever named by id)."""

    subdomain: str | None
    zone_id: str


@dataclass(frozen=True)
class TenantHint:
    """Which tenant a request names, before the registry is asked.

    `source` is ``"x-zid"``, ``"app_tid"`` or ``"host"`` (None: the request
    names no tenant, it is for the provider). With a `zone_id`, `subdomain`
    is the host's label, if any: the name a zone id never seen before gets
    when it is that label's default zone id.
    """

    subdomain: str | None = None
    zone_id: str | None = None
    source: str | None = None


class UnknownTenant(LookupError):
    """A tenant the registry does not know while `TenantRegistry.strict` is on."""


def tenant_hint(
    headers: Mapping[str, str],
    form: Mapping[str, str],
    host_domains: Iterable[str],
    *,
    app_tid: bool,
) -> TenantHint:
    """The tenant a request names, in order: the ``x-zid`` header, the ``app_tid`` form field
    (when `app_tid`, the IAS shape), the first label of the Host header when the rest
    is one of `host_domains`; else none. `headers` have lower-case names.
    """
    label = label_under(headers.get("host"), host_domains)
    zone = (headers.get("x-zid") or "").strip()
    if zone:
        return TenantHint(label, zone[:_MAX_ZONE_ID], "x-zid")
    if app_tid:
        tid = (form.get("app_tid") or "").strip()
        if tid:
            return TenantHint(label, tid[:_MAX_ZONE_ID], "app_tid")
    if label is not None:
        return TenantHint(subdomain=label, source="host")
    return TenantHint()


@safe_repr
class TenantRegistry:
    """Known tenants, by subdomain and by zone id; thread-safe.

    With `strict` off (the default) an unknown subdomain or zone id is a new
    tenant, made on first use (a subdomain gets `default_zone_id`); with
    `strict` on it is an `UnknownTenant`.
    """

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self._lock = threading.Lock()
        self._by_subdomain: dict[str, Tenant] = {}
        self._by_zone: dict[str, Tenant] = {}

    def __repr__(self) -> str:
        with self._lock:
            count = len(self._by_zone)
        return f"TenantRegistry(tenants={count}, strict={self.strict})"

    def add(self, subdomain: str, zone_id: str | None = None) -> str:
        """Register `subdomain` (with `zone_id`, default `default_zone_id`); its zone id.

        Adding a known tenant again returns its zone id; a subdomain or zone id
        already taken by another tenant is a ValueError.
        """
        label = check_subdomain(subdomain)
        zone = default_zone_id(label) if zone_id is None else _check_zone(zone_id)
        with self._lock:
            known = self._by_subdomain.get(label)
            if known is not None:
                if zone_id is not None and known.zone_id != zone:
                    raise ValueError(f"tenant {label!r} already has zone id {known.zone_id!r}")
                return known.zone_id
            other = self._by_zone.get(zone)
            if other is not None and other.subdomain is not None:
                raise ValueError(f"zone id {zone!r} already belongs to {other.subdomain!r}")
            self._store(Tenant(label, zone))
        return zone

    def _store(self, tenant: Tenant) -> None:
        # Under self._lock.
        if tenant.subdomain is not None:
            self._by_subdomain[tenant.subdomain] = tenant
        self._by_zone[tenant.zone_id] = tenant

    def zone_id_of(self, subdomain: str) -> str:
        """The zone id `subdomain` has, or would get on first use."""
        label = check_subdomain(subdomain)
        with self._lock:
            known = self._by_subdomain.get(label)
        return known.zone_id if known is not None else default_zone_id(label)

    def by_zone(self, zone_id: str) -> Tenant | None:
        """The known tenant with `zone_id`, or None."""
        with self._lock:
            return self._by_zone.get(zone_id)

    def _named(self, hint: TenantHint) -> Tenant:
        # Under self._lock. The tenant a zone id hint names, known or as it would be made.
        zone = str(hint.zone_id)
        known = self._by_zone.get(zone)
        if known is not None and known.subdomain is not None:
            return known
        label = hint.subdomain
        if label is None or label in self._by_subdomain or default_zone_id(label) != zone:
            label = None
        return Tenant(label, zone)

    def peek(self, hint: TenantHint) -> Tenant | None:
        """The tenant `hint` names, known or not, without registering anything."""
        if hint.zone_id is not None:
            with self._lock:
                return self._named(hint)
        if hint.subdomain is not None:
            return Tenant(hint.subdomain, self.zone_id_of(hint.subdomain))
        return None

    def resolve(self, hint: TenantHint) -> Tenant | None:
        """The tenant `hint` names, made on first use; None for the provider.

        Raises `UnknownTenant` for an unknown one while `strict` is on.
        """
        if hint.zone_id is None and hint.subdomain is None:
            return None
        with self._lock:
            if hint.zone_id is not None:
                made = self._named(hint)
                known = self._by_zone.get(made.zone_id)
                if known is not None and known != made:
                    self._store(made)  # first seen by id alone: it gets its subdomain now
                    return made
            else:
                label = check_subdomain(str(hint.subdomain))
                known = self._by_subdomain.get(label)
                made = Tenant(label, default_zone_id(label))
            if known is not None:
                return known
            if self.strict:
                raise UnknownTenant("unknown tenant")
            other = self._by_zone.get(made.zone_id)
            if made.subdomain is not None and other is not None and other.subdomain is not None:
                raise UnknownTenant(f"zone id {made.zone_id} belongs to another tenant")
            self._store(made)
            return made


def _check_zone(zone_id: str) -> str:
    if not isinstance(zone_id, str) or not zone_id.strip() or len(zone_id) > _MAX_ZONE_ID:
        raise ValueError(f"{zone_id!r} is not a zone id (1 to {_MAX_ZONE_ID} characters)")
    return zone_id.strip()

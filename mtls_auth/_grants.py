"""The OAuth grants mtls-auth asks for: adding a grant is one class in this module.

A grant says what the token request form carries besides ``grant_type`` and
``client_id`` (every request carries those; the client authenticates with its
certificate, never with a secret), what identifies its token in the cache (never
a secret itself), and which cache bucket its tokens live in, so that each kind
of token has its own bound. Grants are small frozen dataclasses: hashable,
comparable, and safe to print.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._redact import safe_repr

__all__ = ["CLIENT_CREDENTIALS", "ClientCredentials", "Grant"]


class Grant:
    """What to put in the form for one way of obtaining a token.

    Subclasses set `grant_type`, and override `fields` (form fields besides
    ``grant_type`` and ``client_id``) and `key` (what tells their tokens apart:
    digests of secrets, never the secrets) when they carry data. `bucket` names
    the cache bucket, whose size limit the client configures.
    """

    grant_type: ClassVar[str]
    bucket: ClassVar[str] = "client"
    #: Form fields the grant sets itself; `params=` may not set them.
    reserved: ClassVar[frozenset[str]] = frozenset()

    def fields(self) -> list[tuple[str, str]]:
        return []

    @property
    def key(self) -> tuple[str, ...]:
        return (self.grant_type,)

    def describe(self) -> str:
        """A short, non-secret description for repr."""
        return self.grant_type


@safe_repr
@dataclass(frozen=True)
class ClientCredentials(Grant):
    """The technical token of the client itself (RFC 6749 section 4.4)."""

    grant_type: ClassVar[str] = "client_credentials"


#: The one client-credentials grant (it carries no data).
CLIENT_CREDENTIALS = ClientCredentials()

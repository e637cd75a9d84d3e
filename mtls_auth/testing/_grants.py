"""The grants the token server knows: ``grant_type`` -> a function deciding who gets a token.

A grant handler takes the app and a well-formed `TokenCall` (form checked for
duplicates, ``grant_type`` present, clock read) and returns the `Grant` to
issue a token for, or an error `Response`. The app does the rest: default
scope by endpoint shape, index, expiry, opaque or JWT token, records.

Adding a grant is one function here and one entry in `GRANTS`. Client
authentication by certificate is `TokenApp.authenticate_client`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Callable

from ._oauth import Grant, TokenCall
from ._wire import Response

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._app import TokenApp

    GrantHandler = Callable[[TokenApp, TokenCall], Grant | Response]

__all__ = ["GRANTS", "client_credentials"]


def client_credentials(app: TokenApp, call: TokenCall) -> Grant | Response:
    """RFC 6749 section 4.4: a token for the authenticated client itself."""
    client = app.authenticate_client(call)
    if isinstance(client, Response):
        return client
    client_id, peer = client
    return Grant(
        client_id,
        peer,
        scope=call.form.get("scope"),
        namespace=call.form.get("credstore_namespace"),
    )


#: grant_type -> its handler, in the order discovery lists them.
GRANTS: Mapping[str, GrantHandler] = MappingProxyType(
    {
        "client_credentials": client_credentials,
    }
)

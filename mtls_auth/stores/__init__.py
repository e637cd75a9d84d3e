"""Token stores: one token per fleet of processes, shared below each process's own cache.

Give an auth object a store, and all processes that use the same client
certificate share its tokens: the first one to miss takes a lease, fetches,
and puts the token in the store; the others read it from there::

    auth = MtlsOAuth2.from_binding(binding, token_store="file:///run/my-app/tokens")
    auth = MtlsOAuth2.from_binding(binding, token_store="rediss://:secret@cache.internal:6380/0")
    auth = MtlsOAuth2.from_binding(binding, token_store=RedisTokenStore(url, prefix="app:"))

- `FileTokenStore` (``file:///absolute/path``): the worker processes of one
  host (gunicorn, uvicorn, Celery prefork), through a directory of this user's
  own (mode 0700, created if missing). Needs nothing else.
- `RedisTokenStore` (``redis://``, ``rediss://``): processes on many hosts,
  through Redis 6 or later, or Valkey. Needs ``pip install 'mtls-auth[redis]'``.
- Your own: subclass `mtls_auth.TokenStore` (get, set, lease, release).

What goes into a store is sealed (AES-256-GCM) under a key derived from the
client's private key and filed under an HMAC digest: nobody without that key
reads a token, or learns which client, tenant or user an entry is for. A store
that is down or slow never fails a request. README.md ("One token per fleet")
says more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._errors import TokenStoreError, clean_text
from .._lazy import lazy_names
from .._redact import Secret, guarded, redact
from .._store import TokenStore

if TYPE_CHECKING:
    from .file import FileTokenStore
    from .redis import RedisTokenStore

__all__ = ["FileTokenStore", "RedisTokenStore", "TokenStore", "open_store"]

#: The stores and their modules, loaded on first use (the Redis one imports redis-py).
_LAZY = {"FileTokenStore": "file", "RedisTokenStore": "redis"}
_SCHEMES = "redis://, rediss:// or file:///"


@guarded  # a Redis URL may hold a password: no frame keeps it on an error
def open_store(url: str | Secret) -> TokenStore:
    """The store a URL names: ``redis://`` or ``rediss://`` (Redis, Valkey), ``file:///path``.

    What ``token_store="..."`` does. A URL of another scheme, a relative file
    path or a URL that cannot be parsed raises `TokenStoreError` (an
    `ArgumentError`), whose message never repeats a password the URL holds.
    """
    sealed: Secret = redact(url)
    del url
    text = sealed.value
    if not isinstance(text, str):
        raise TokenStoreError(
            f"token_store must be a URL ({_SCHEMES}) or a mtls_auth.TokenStore, "
            f"not {type(text).__name__}"
        )
    scheme, colon, _ = text.partition(":")
    scheme = scheme.lower()
    if scheme == "file":
        from .file import FileTokenStore

        return FileTokenStore.from_url(text)
    if scheme in ("redis", "rediss"):
        from .redis import RedisTokenStore

        return RedisTokenStore(sealed)
    if not colon or "/" in scheme or "\\" in scheme:
        hint = " (a directory is given as file:///absolute/path)" if text.startswith("/") else ""
        raise TokenStoreError(f"token_store must be a URL starting with {_SCHEMES}{hint}")
    raise TokenStoreError(
        f"token_store URL scheme {clean_text(scheme, 20)!r} is not known: "
        f"use {_SCHEMES} (or pass a mtls_auth.TokenStore)"
    )


__getattr__, __dir__ = lazy_names(__name__, _LAZY)

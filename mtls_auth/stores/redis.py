"""`RedisTokenStore`: processes on many hosts share tokens through Redis (6 or later) or Valkey.

Two kinds of keys, under a prefix (default ``mtls-auth:``):

=========================== ==================================================
``<prefix>tok:<key>``       a sealed entry, ``SET ... PX <ms>``: Redis drops it
                            at the token's refresh point
``<prefix>lease:<key>``     a lease, ``SET ... <holder> NX PX <ms>``: one holder
                            at a time, gone by itself when its time is up;
                            released by a small Lua script that deletes it only
                            if it still names the holder (compare and delete)
============================ ==================================================

The client is redis-py (``pip install 'mtls-auth[redis]'``), imported when a
`RedisTokenStore` is made, never by ``import mtls_auth``. Each process has
one connection pool, opened on first use: after ``os.fork()`` the child drops
the pool it inherited (never closing it, which could disturb the parent's
connections) and opens its own. Timeouts are short and there are no retries:
a server that does not answer within `timeout` counts as down, and requests go
on without the store until it answers again.

The URL is redis-py's: ``redis://[[user]:password@]host[:port][/db]``, or
``rediss://`` for TLS, with its query options (``?ssl_ca_certs=/path/ca.pem``
for a private CA). Its password never shows in a repr, a log line or an error.
"""

from __future__ import annotations

import math
import threading
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .. import _after_fork as after_fork
from .._errors import TokenStoreError, check_seconds, clean_text
from .._redact import Secret, guarded, redact, safe_repr
from .._store import TokenStore

__all__ = ["RedisTokenStore"]

#: Compare and delete: the lease goes only if it still names its holder.
_RELEASE = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"""


@safe_repr
class RedisTokenStore(TokenStore):
    """A token store on a Redis (6 or later) or Valkey server, for processes on many hosts.

    `url` is ``redis://`` or ``rediss://`` (TLS), as redis-py reads it; a
    password in it is kept sealed. `prefix` starts every key the store writes
    (several applications can share one database). `timeout` bounds each
    command and connection attempt (seconds); a store slower than that is
    treated as down for a few seconds, never failing a request.
    ``token_store="redis://..."`` makes one with the defaults.
    """

    @guarded  # the URL may hold a password: no frame keeps it on an error
    def __init__(
        self, url: str | Secret, *, prefix: str = "mtls-auth:", timeout: float = 0.5
    ) -> None:
        sealed: Secret = redact(url)
        del url
        self._shown = _describe(sealed)
        if not isinstance(prefix, str) or len(prefix) > 64 or not prefix.isprintable():
            raise TokenStoreError("prefix must be a string of at most 64 printable characters")
        self.prefix = prefix
        self.timeout = check_seconds(timeout, "timeout")
        self._url = sealed
        self._module = _import_redis()
        self._client: Any = None
        self._release: Any = None
        self._lock = threading.Lock()
        after_fork.register(self)

    def _after_fork(self) -> None:
        # In a forked child: the parent's pool and its sockets are not ours to
        # use or close; the next call opens this process's own.
        self._lock = threading.Lock()
        self._client = None
        self._release = None

    def _connection(self) -> tuple[Any, Any]:
        """This process's client and its release script, made on first use (one pair)."""
        with self._lock:
            if self._client is None:
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                tls: dict[str, Any] = {}
                if self._shown.startswith("rediss:"):
                    # Verified chain and host name whatever redis-py's defaults
                    # (it checked no host name before 6.0): the AUTH password
                    # and the leases travel over this connection.
                    tls = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
                client = self._module.Redis.from_url(
                    self._url.value,
                    socket_timeout=self.timeout,
                    socket_connect_timeout=self.timeout,
                    # Down is down: no retries, the library goes on without the store.
                    retry=Retry(NoBackoff(), 0),
                    retry_on_timeout=False,
                    decode_responses=False,
                    health_check_interval=0,
                    **tls,
                )
                self._release = client.register_script(_RELEASE)
                self._client = client
            return self._client, self._release

    # -- the store ---------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """``GET <prefix>tok:<key>``."""
        value = self._connection()[0].get(self.prefix + "tok:" + key)
        return None if value is None else bytes(value)

    def set(self, key: str, value: bytes, ttl: float) -> None:
        """``SET <prefix>tok:<key> <value> PX <ttl in ms>``."""
        self._connection()[0].set(self.prefix + "tok:" + key, value, px=_milliseconds(ttl))

    def lease(self, key: str, holder: str, ttl: float) -> bool:
        """``SET <prefix>lease:<key> <holder> NX PX <ttl in ms>``: True if it was set."""
        taken = self._connection()[0].set(
            self.prefix + "lease:" + key, holder, nx=True, px=_milliseconds(ttl)
        )
        return bool(taken)

    def release(self, key: str, holder: str) -> None:
        """Delete ``<prefix>lease:<key>`` if it still holds `holder` (a Lua script)."""
        _, release = self._connection()
        release(keys=[self.prefix + "lease:" + key], args=[holder])

    def close(self) -> None:
        """Close this process's connections (opened again by the next call)."""
        with self._lock:
            client, self._client, self._release = self._client, None, None
        if client is not None:
            client.connection_pool.disconnect()

    def __repr__(self) -> str:
        return f"<RedisTokenStore {self._shown} prefix={self.prefix!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("a RedisTokenStore may hold a password and cannot be pickled")


def _milliseconds(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


#: URL query options that may be given: where the CA and a client certificate
#: are. Others could turn TLS verification off (``ssl_cert_reqs=none``) or
#: replace the timeouts that keep a slow Redis from holding up a request.
_QUERY_OPTIONS = frozenset({"ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile"})


@guarded  # the URL may hold a password: no frame keeps it on an error
def _describe(sealed: Secret) -> str:
    """The URL as shown in repr and logs, checked: scheme, host, port and database only."""
    url = sealed.value
    if not isinstance(url, str):
        raise TokenStoreError(f"the Redis URL must be a string, not {type(url).__name__}")
    if not url.isprintable() or any(c.isspace() for c in url):
        raise TokenStoreError("the Redis URL holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # The message could quote the URL: say only what is wrong.
        raise TokenStoreError("the Redis URL cannot be parsed: check its host and port") from None
    options = {name for name, _ in parse_qsl(parts.query, keep_blank_values=True)}
    if options - _QUERY_OPTIONS:
        unknown = ", ".join(sorted(str(clean_text(o, 30)) for o in options - _QUERY_OPTIONS))
        raise TokenStoreError(
            f"the Redis URL option(s) {unknown} are not accepted (only "
            f"{', '.join(sorted(_QUERY_OPTIONS))}): TLS verification and the timeouts "
            "stay as the library sets them"
        )
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise TokenStoreError(
            f"a Redis URL starts with redis:// or rediss://, not {clean_text(scheme, 20)!r}"
        )
    host = parts.hostname
    if not host:
        raise TokenStoreError(f"the Redis URL names no host: {scheme}://HOST[:PORT][/DB]")
    database = parts.path.strip("/") or "0"
    if not database.isdigit():
        raise TokenStoreError(
            f"the path of a Redis URL is a database number, not {clean_text(database, 20)!r}"
        )
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port or 6379}/{int(database)}"


def _import_redis() -> Any:
    try:
        import redis
    except ImportError as exc:
        raise TokenStoreError(
            "the Redis token store needs redis-py: pip install 'mtls-auth[redis]'"
        ) from exc
    return redis

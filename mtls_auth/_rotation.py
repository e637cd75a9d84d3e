"""Keeping the client certificate current without a restart.

XSUAA-managed certificates live 7 days, Credential Store ones 60. A
`CertificateWatch` knows where the current certificate came from and checks,
cheaply and rarely, whether a newer one is there:

* a binding file or Kubernetes directory: one `stat` per file at most every
  `interval` seconds (every second once the certificate is within an hour of
  expiry), and a re-read only when something changed;
* a provider callable (a vault, a secret manager): called again when the
  certificate nears expiry, at most every `provider_interval` seconds;
* either, immediately (rate-limited), after the token endpoint rejected the
  certificate, because the usual cause is that it has just been rotated.

A new certificate is validated before it replaces the old one; a broken file
mid-rotation keeps the old certificate and logs a warning. It also logs a
WARNING 24 hours and 1 hour before the current certificate expires, once each.

What is built from a certificate (an SSLContext, a connection pool, an HTTP
client) follows it through `PerCertificate`, the one place that says "rebuild
this when the certificate's generation changes, and keep the old one until it
is closed". A `CertificateFeed` is whatever has a current certificate and
generation: a client whose certificate rotates, or a `FixedCertificate`.
"""

from __future__ import annotations

import datetime
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, Protocol, TypeVar

from . import _after_fork as after_fork
from ._binding import Binding
from ._certificate import CertificateSource, ClientCertificate, coerce_certificate
from ._errors import CertificateError, MtlsAuthError
from ._redact import Secret, safe_repr
from ._sources import BindingSource
from ._tls import Verify

__all__ = [
    "CertificateFeed",
    "CertificateState",
    "CertificateWatch",
    "FixedCertificate",
    "Loaded",
    "PerCertificate",
    "SharedContexts",
    "as_feed",
    "shared_contexts",
]

T = TypeVar("T")

logger = logging.getLogger(__name__)

_WARN_AT = (datetime.timedelta(hours=24), datetime.timedelta(hours=1))


@safe_repr
@dataclass(frozen=True)
class Loaded:
    """One reading of the source: the certificate and, for bindings, the binding."""

    certificate: ClientCertificate
    binding: Binding | None = None


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@safe_repr
class CertificateWatch:
    """Decides when to look for a new certificate, and loads it."""

    def __init__(
        self,
        initial: Loaded,
        *,
        source: BindingSource | None = None,
        provider: Callable[[], ClientCertificate] | None = None,
        interval: float = 5.0,
        provider_interval: float = 60.0,
        rotate_before: datetime.timedelta = datetime.timedelta(hours=24),
        timer: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        self.current = initial
        self._source = source if source is not None and source.rereadable else None
        self._provider = provider
        self._interval = interval
        self._provider_interval = provider_interval
        self._rotate_before = rotate_before
        self._timer = timer
        self._now = now
        self._lock = threading.Lock()
        self._next_check = timer() + interval
        self._next_provider_call = timer() + provider_interval
        self._last_forced = -1e9
        self._warned: set[tuple[str, datetime.timedelta]] = set()
        self._last_failure: str | None = None
        after_fork.register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def due(self) -> bool:
        """The hot-path test: one clock reading and a comparison."""
        return self._timer() >= self._next_check

    def poll(self, *, force: bool = False) -> Loaded | None:
        """Look for a new certificate; return it if one replaced the current one.

        Without `force` this is a no-op until the next check is due. `force`
        (after the server rejected us) is honoured at most once a second.
        """
        now = self._timer()
        if not force and now < self._next_check:
            return None
        # A routine check skips if another thread is already checking; a forced
        # one waits for it, so every rejected caller sees its outcome.
        if not self._lock.acquire(blocking=force, timeout=10 if force else -1):
            return None
        try:
            if force:
                if now - self._last_forced < 1.0:
                    return None
                self._last_forced = now
            elif now < self._next_check:
                return None
            certificate = self.current.certificate
            left = certificate.not_after - self._now()
            soon = left < datetime.timedelta(hours=1)
            self._next_check = now + (min(1.0, self._interval) if soon else self._interval)
            self._warn_expiry(certificate)
            loaded = self._load(force=force, near_expiry=left <= self._rotate_before, now=now)
            if loaded is None or loaded.certificate == certificate:
                if loaded is not None and loaded.binding != self.current.binding:
                    self.current = loaded
                return None
            if loaded.certificate.not_after < certificate.not_after and not force:
                logger.warning(
                    "ignoring a replacement certificate that expires before the current one "
                    "(%s < %s)",
                    loaded.certificate.not_after,
                    certificate.not_after,
                )
                return None
            self.current = loaded
            logger.warning(
                "client certificate rotated: %s (x5t#S256 %s, expires %s) replaces %s",
                loaded.certificate.subject,
                loaded.certificate.thumbprint,
                loaded.certificate.not_after.isoformat(),
                certificate.thumbprint,
            )
            self._warn_expiry(loaded.certificate)
            return loaded
        finally:
            self._lock.release()

    def _load(self, *, force: bool, near_expiry: bool, now: float) -> Loaded | None:
        try:
            if self._source is not None:
                if not force and not self._source.changed():
                    return None
                binding = self._source.read()
                certificate = ClientCertificate.from_pem(binding.certificate, binding.key)
                return Loaded(certificate, binding)
            if self._provider is not None:
                if not force and not (near_expiry and now >= self._next_provider_call):
                    return None
                self._next_provider_call = now + self._provider_interval
                certificate = self._provider()
                if not isinstance(certificate, ClientCertificate):
                    raise TypeError(
                        "the certificate provider must return a ClientCertificate, "
                        f"not {type(certificate).__name__}"
                    )
                return Loaded(certificate)
        except (MtlsAuthError, TypeError, ValueError, OSError) as exc:
            self._load_failed(str(exc))
        except Exception as exc:  # noqa: BLE001 - a provider's own error must not fail requests
            # A vault client's message may carry its own secrets: name the type only.
            self._load_failed(f"the certificate provider raised {type(exc).__name__}")
        else:
            self._last_failure = None
        return None

    def _load_failed(self, reason: str) -> None:
        # Once per distinct failure: a broken binding is checked every few seconds.
        level = logging.DEBUG if reason == self._last_failure else logging.WARNING
        self._last_failure = reason
        logger.log(
            level, "could not load the rotated certificate, keeping the current one: %s", reason
        )

    def _warn_expiry(self, certificate: ClientCertificate) -> None:
        left = certificate.not_after - self._now()
        for threshold in _WARN_AT:
            key = (certificate.thumbprint, threshold)
            if left <= threshold and key not in self._warned:
                self._warned.add(key)
                if left <= datetime.timedelta(0):
                    logger.warning(
                        "client certificate %s expired at %s and no replacement was found",
                        certificate.subject,
                        certificate.not_after.isoformat(),
                    )
                else:
                    logger.warning(
                        "client certificate %s expires in %s (at %s); %s",
                        certificate.subject,
                        str(left).split(".")[0],
                        certificate.not_after.isoformat(),
                        "watching its binding for a replacement"
                        if self._source or self._provider
                        else "rotate it and restart, or use a binding path or provider",
                    )


# -- following the certificate ----------------------------------------------------------


class CertificateState(Protocol):
    """A certificate and its generation, read together."""

    @property
    def certificate(self) -> ClientCertificate: ...

    @property
    def generation(self) -> int: ...


class CertificateFeed(Protocol):
    """Something with a current certificate: a token client, or a fixed certificate."""

    @property
    def state(self) -> CertificateState: ...


@safe_repr
@dataclass(frozen=True)
class _Fixed:
    certificate: ClientCertificate
    generation: int = 0


@safe_repr
class FixedCertificate:
    """A feed whose certificate never changes (generation 0 for ever)."""

    __slots__ = ("state",)

    def __init__(self, certificate: ClientCertificate) -> None:
        self.state: CertificateState = _Fixed(certificate)

    def __repr__(self) -> str:
        return f"<FixedCertificate {self.state.certificate!r}>"


def as_feed(
    certificate: CertificateSource | CertificateFeed,
    key: str | bytes | Secret | None,
    password: str | bytes | Secret | None,
) -> CertificateFeed:
    """What adapters and transports present: a feed to follow, or a fixed certificate.

    PEM text (with `key`) and a `ClientCertificate` are fixed for the life of the
    adapter or transport; a feed (an auth's token client, as `auth.adapter()`
    passes it) is followed through its rotations.
    """
    if isinstance(certificate, (str, bytes, ClientCertificate)):
        return FixedCertificate(coerce_certificate(certificate, key, password))
    if key is not None or password is not None:
        raise CertificateError("key= and password= apply to PEM text only")
    return certificate


class PerCertificate(Generic[T]):
    """A value built from a feed's current certificate, rebuilt when it rotates.

    `get` returns the value for the feed's current generation, building it
    with `build` the first time and whenever the generation moved on (at most
    one build per generation, whatever the number of threads). The value it
    replaces is kept until `close`, since a request another thread started on
    it must finish there; `close` closes them all with `dispose`, and the next
    `get` builds afresh. A forked child forgets them all and builds its own.
    """

    __slots__ = ("__weakref__", "_build", "_current", "_dispose", "_lock", "_retired", "feed")

    def __init__(
        self,
        feed: CertificateFeed,
        build: Callable[[ClientCertificate], T],
        dispose: Callable[[T], object] | None = None,
    ) -> None:
        self.feed = feed
        self._build = build
        self._dispose = dispose
        self._lock = threading.Lock()
        self._current: tuple[int, T] | None = None
        self._retired: list[T] = []
        after_fork.register(self)

    def _after_fork(self) -> None:
        # Forgotten, not closed: closing could talk on the parent's connections.
        self._lock = threading.Lock()
        self._current = None
        self._retired = []

    @property
    def certificate(self) -> ClientCertificate:
        """The certificate the value is (or will be) built from."""
        return self.feed.state.certificate

    def ready(self) -> T | None:
        """The value if it is current, without building: the async hot path."""
        current = self._current
        if current is not None and current[0] == self.feed.state.generation:
            return current[1]
        return None

    def get(self) -> T:
        current = self._current
        state = self.feed.state
        if current is not None and current[0] == state.generation:
            return current[1]
        with self._lock:
            current = self._current
            state = self.feed.state  # one read: certificate and generation agree
            if current is None or current[0] != state.generation:
                if current is not None:
                    self._retired.append(current[1])
                current = self._current = (state.generation, self._build(state.certificate))
            return current[1]

    def take(self) -> list[T]:
        """Every value built so far, current last; the next `get` builds afresh."""
        with self._lock:
            current, self._current = self._current, None
            values, self._retired = self._retired, []
        if current is not None:
            values.append(current[1])
        return values

    def give_back(self, values: list[T]) -> None:
        """Values `take` returned that were not disposed of: the next `take` has them."""
        with self._lock:
            self._retired.extend(values)

    def close(self) -> None:
        dispose = self._dispose
        for value in self.take():
            if dispose is not None:
                dispose(value)


@safe_repr
class SharedContexts:
    """The SSLContexts of one certificate source: one per HTTP-library flavour, shared.

    Loading a trust store costs a megabyte and milliseconds per context, so the
    token sender, adapters, transports and per-event-loop clients of one auth
    share contexts. They cannot all share one: urllib3 sets the verify mode and
    ALPN of the context it is given, httpcore sets ALPN (``http/1.1``, or
    ``h2`` too when HTTP/2 is on), each per connection. Within a flavour those
    settings are always the same, so each flavour (``"urllib3"``,
    ``"httpcore"``, ``"httpcore-h2"``) has one context per certificate, built
    on first use and rebuilt after a rotation. It is itself a feed: adapters
    and transports given one follow its certificate.
    """

    __slots__ = ("__weakref__", "_lock", "_per_certificate", "verify")

    def __init__(self, feed: CertificateFeed, verify: Verify) -> None:
        self.verify = verify
        self._per_certificate: PerCertificate[tuple[ClientCertificate, dict[str, ssl.SSLContext]]]
        self._per_certificate = PerCertificate(feed, lambda certificate: (certificate, {}))
        self._lock = threading.Lock()
        after_fork.register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    @property
    def state(self) -> CertificateState:
        return self._per_certificate.feed.state

    @property
    def certificate(self) -> ClientCertificate:
        return self.state.certificate

    def get(
        self, flavour: str, prepare: Callable[[ssl.SSLContext], None] | None = None
    ) -> ssl.SSLContext:
        """The context for `flavour` and the current certificate.

        `prepare`, if given, adjusts a new context once, before anyone uses it
        (the same for every call with one flavour).
        """
        certificate, contexts = self._per_certificate.get()
        context = contexts.get(flavour)
        if context is None:
            with self._lock:
                context = contexts.get(flavour)
                if context is None:
                    context = certificate.ssl_context(self.verify)
                    if prepare is not None:
                        prepare(context)
                    contexts[flavour] = context
        return context

    def __repr__(self) -> str:
        return f"<SharedContexts for {self.certificate!r}>"


def shared_contexts(
    certificate: CertificateSource | CertificateFeed,
    key: str | bytes | Secret | None,
    password: str | bytes | Secret | None,
    verify: Verify,
) -> SharedContexts:
    """The contexts an adapter or transport presents: an auth's own, or new ones.

    An auth passes its `SharedContexts` (then nothing is built twice);
    PEM text, a `ClientCertificate` or another feed get contexts of their own.
    """
    if isinstance(certificate, SharedContexts):
        if key is not None or password is not None:
            raise CertificateError("key= and password= apply to PEM text only")
        return certificate
    return SharedContexts(as_feed(certificate, key, password), verify)

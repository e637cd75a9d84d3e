"""The loopback mTLS server, run in a process of its own.

The benchmark's client code and the server must not share a GIL: on a 2-core
machine a server thread in the client's process would steal the client's
interpreter and blur every ratio. `LoopbackServer` starts
`mtls_auth.testing.TokenServer` in a child process (multiprocessing, spawn)
and steers it over a pipe: token request count, accepted connections, injected
delays, token lifetime, clearing its records between phases, a tenant's
service key and user tokens minted by the server (for the jwt-bearer grant).

The child generates the PKI and a client certificate in memory and hands the
client side what it needs (CA, certificate chain and key PEM) over the pipe:
nothing is written to disk.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from dataclasses import dataclass
from typing import Any

CLIENT_ID = "sb-bench-client!t1"


@dataclass(frozen=True)
class Endpoint:
    """What a client needs to talk to the loopback server."""

    url: str
    token_url: str
    resource_url: str
    ca_pem: str
    cert_pem: str
    key_pem: str
    client_id: str = CLIENT_ID


class LoopbackServer:
    """A `TokenServer` in a child process, controlled through a pipe."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child,), name="bench-token-server", daemon=True
        )
        self.endpoint: Endpoint | None = None

    def start(self) -> Endpoint:
        self._process.start()
        self.endpoint = Endpoint(**self._conn.recv())
        return self.endpoint

    def _call(self, op: str, *args: Any) -> Any:
        self._conn.send((op, args))
        ok, value = self._conn.recv()
        if not ok:
            raise RuntimeError(f"server op {op} failed: {value}")
        return value

    @property
    def token_request_count(self) -> int:
        """Requests that reached the token endpoint since the last `clear`."""
        return int(self._call("count"))

    def clear(self) -> None:
        """Forget recorded requests and queued faults (the token count restarts at 0)."""
        self._call("clear")

    def delay_tokens(self, seconds: float, times: int = 100_000) -> None:
        """Make the next `times` token requests wait `seconds` before answering."""
        self._call("delay", seconds, times)

    def set_token_lifetime(self, seconds: float) -> None:
        self._call("lifetime", seconds)

    @property
    def connections_accepted(self) -> int:
        """TCP connections the server accepted since it started (`clear` keeps it)."""
        return int(self._call("connections"))

    def tenant_binding(self, subdomain: str = "provider") -> dict[str, Any]:
        """An XSUAA x509 service key of tenant `subdomain`, pointing at the server.

        Its token host is ``<subdomain>.authentication.cert.mtls.test``: such
        names resolve (to 127.0.0.1) only inside `mtls_auth.testing.loopback_names`.
        """
        return dict(self._call("binding", subdomain))

    def user_tokens(
        self, subdomain: str, first: int, count: int, lifetime: float = 3600.0
    ) -> list[str]:
        """`count` user JWTs of tenant `subdomain` (``sub`` user-<first> onwards).

        Minted by the server (`TokenServer.mint_user_token`): its jwt-bearer
        grant accepts them as ``assertion`` for `lifetime` seconds.
        """
        return list(self._call("user_tokens", subdomain, first, count, lifetime))

    def stop(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(EOFError, OSError):
                self._call("stop")
            self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)

    def __enter__(self) -> LoopbackServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _serve(conn: Any) -> None:
    """Child process: run the TokenServer and answer control messages."""
    from mtls_auth.testing import PKI, Fault, TokenServer, xsuaa_service_key

    pki = PKI()
    client = pki.issue_client(CLIENT_ID, key_type="rsa")
    server = TokenServer(pki, token_lifetime=3600, idle_timeout=600)
    server.start()
    server.register_client(CLIENT_ID, client)
    conn.send(
        {
            "url": server.url,
            "token_url": server.token_url,
            "resource_url": server.resource_url,
            "ca_pem": server.ca_pem,
            "cert_pem": client.chain_pem,
            "key_pem": client.key_pem,
        }
    )
    try:
        while True:
            try:
                op, args = conn.recv()
            except EOFError:
                return
            try:
                if op == "count":
                    value: Any = server.token_request_count
                elif op == "clear":
                    value = server.clear()
                elif op == "delay":
                    seconds, times = args
                    value = server.inject(Fault.delay(seconds), times=times)
                elif op == "lifetime":
                    server.token_lifetime = float(args[0])
                    value = None
                elif op == "connections":
                    value = server.connections_accepted
                elif op == "binding":
                    value = xsuaa_service_key(server, client, CLIENT_ID, subdomain=args[0])
                elif op == "user_tokens":
                    subdomain, first, count, lifetime = args
                    value = [
                        server.mint_user_token(f"user-{i}", subdomain=subdomain, lifetime=lifetime)
                        for i in range(first, first + count)
                    ]
                elif op == "stop":
                    conn.send((True, None))
                    return
                else:
                    raise ValueError(f"unknown op {op!r}")
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                conn.send((False, repr(exc)))
            else:
                conn.send((True, value))
    finally:
        server.stop(timeout=2)

"""m. Idle sockets to the token endpoint after the library's idle horizon.

mtls-auth closes its token-endpoint connections once `mtls_auth._idle.HORIZON`
seconds (30) pass without a fetch, when no refresh is due sooner. Here the
horizon is shortened to `horizon` seconds in the measuring process (both the
module constant and `IdleRelease`'s default, which is bound when the class is
defined), tokens live an hour, and each scenario runs in a fresh interpreter:

``ours``
    `n` auth objects (`MtlsOAuth2` from PEM, private CA), one fetch each,
    all kept (requests, httpx sync).
``ours, tenants``
    one auth from the provider tenant's service key and `n`
    ``for_tenant(f"tenant-{i}")`` objects with a token each (tenant hosts
    resolved by `loopback_names`).
``authlib``
    `n` ``OAuth2Session`` / ``OAuth2Client`` objects after ``fetch_token``, all
    kept (they never close their connections themselves; the child hides
    httpx2, which authlib would otherwise build its httpx client on).

Counted: this process's TCP sockets to the server's port (``/proc/self/fd``
against ``/proc/net/tcp``) right after the last fetch, and after the horizon
(polled until none are left, at most ``horizon + 5`` seconds; the earliest
objects' connections may already be gone at the first count). The server
counts the TCP connections it accepted meanwhile: each is a full TLS
handshake, since requests and httpx have no way to resume TLS sessions.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from isolated import run_isolated
from loopback import Endpoint, LoopbackServer


def sockets_to(port: int) -> int:
    """This process's TCP sockets whose remote port is `port`, in any state."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                lines = handle.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[9] in inodes:
                count += 1
    return count


def _temp_pem(text: str) -> str:
    import tempfile

    handle, path = tempfile.mkstemp(suffix=".pem")
    with os.fdopen(handle, "w") as file:
        file.write(text)
    return path


def scenario_child(
    scenario: str,
    family: str,
    endpoint: dict[str, Any],
    binding: dict[str, Any],
    n: int,
    horizon: float,
) -> dict[str, Any]:
    """In a fresh interpreter: `n` fetches of `scenario`, then the sockets left over time."""
    from urllib.parse import urlsplit

    import mtls_auth._idle as idle
    from mtls_auth.testing import loopback_names

    idle.HORIZON = horizon
    idle.IdleRelease.__init__.__defaults__ = (horizon,)
    port = urlsplit(endpoint["token_url"]).port
    assert port is not None
    keep: list[Any] = []
    files: list[str] = []
    start = time.perf_counter()
    try:
        with loopback_names():
            if scenario == "authlib":
                files = [_temp_pem(endpoint["cert_pem"]), _temp_pem(endpoint["key_pem"])]
                ca = _temp_pem(endpoint["ca_pem"])
                files.append(ca)
                for _ in range(n):
                    keep.append(_authlib(family, endpoint, (files[0], files[1]), ca))
            else:
                if family == "requests":
                    from mtls_auth.requests import MtlsOAuth2
                else:
                    from mtls_auth.httpx import MtlsOAuth2  # type: ignore[assignment]
                if scenario == "ours":
                    for _ in range(n):
                        auth = MtlsOAuth2(
                            endpoint["token_url"],
                            endpoint["client_id"],
                            endpoint["cert_pem"],
                            endpoint["key_pem"],
                            verify=endpoint["ca_pem"],
                        )
                        auth.token_info()
                        keep.append(auth)
                else:
                    auth = MtlsOAuth2.from_binding(binding, verify=endpoint["ca_pem"])
                    keep.append(auth)
                    for i in range(n):
                        auth.for_tenant(f"tenant-{i}").token_info()
            fetched = time.perf_counter()
            at_end = sockets_to(port)
            deadline = fetched + horizon + 5
            left = at_end
            while left and time.perf_counter() < deadline:
                time.sleep(0.1)
                left = sockets_to(port)
            waited = time.perf_counter() - fetched
            if left == 0:
                time.sleep(min(1.0, horizon))  # and none comes back
                left = sockets_to(port)
    finally:
        for path in files:
            os.unlink(path)
    return {
        "scenario": scenario,
        "family": family,
        "objects": n,
        "fetch_seconds": fetched - start,
        "sockets_after_fetches": at_end,
        "sockets_after_horizon": left,
        "waited_seconds": waited,
        "horizon": horizon,
    }


def _authlib(family: str, endpoint: dict[str, Any], cert: tuple[str, str], ca: str) -> Any:
    import warnings

    if family == "requests":
        from authlib.integrations.requests_client import OAuth2Session

        session = OAuth2Session(endpoint["client_id"], token_endpoint_auth_method="none")
        session.cert = cert
        # verify= on the call: REQUESTS_CA_BUNDLE in the environment beats session.verify.
        session.fetch_token(
            endpoint["token_url"], grant_type="client_credentials", timeout=10, verify=ca
        )
        return session
    import ssl

    # authlib builds on httpx2 whenever it is importable; this process measures
    # authlib on httpx, the library the floor and mtls-auth use here.
    sys.modules.setdefault("httpx2", None)  # type: ignore[arg-type]
    import authlib.deprecate  # noqa: F401 - its "always" filter first: "ignore" wins

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from authlib.integrations.httpx_client import OAuth2Client

        client = OAuth2Client(
            endpoint["client_id"],
            token_endpoint_auth_method="none",
            cert=cert,
            verify=ssl.create_default_context(cafile=ca),
        )
    client.fetch_token(endpoint["token_url"], grant_type="client_credentials")
    return client


def run(server: LoopbackServer, endpoint: Endpoint, *, n: int, horizon: float) -> dict[str, Any]:
    """{family: {scenario: {sockets_after_fetches, sockets_after_horizon, handshakes, ...}}}."""
    import importlib.util

    binding = server.tenant_binding("provider")
    data = {
        "token_url": endpoint.token_url,
        "client_id": endpoint.client_id,
        "cert_pem": endpoint.cert_pem,
        "key_pem": endpoint.key_pem,
        "ca_pem": endpoint.ca_pem,
    }
    scenarios = ["ours", "ours, tenants"]
    if importlib.util.find_spec("authlib") is not None:
        scenarios.append("authlib")
    server.set_token_lifetime(3600)
    results: dict[str, Any] = {}
    for family in ("requests", "httpx"):
        for scenario in scenarios:
            accepted = server.connections_accepted
            outcome = run_isolated(scenario_child, scenario, family, data, binding, n, horizon)
            outcome["handshakes"] = server.connections_accepted - accepted
            results.setdefault(family, {})[scenario] = outcome
    return results

"""l. Memory per auth object after its first fetch, against one SSLContext.

Each arm runs in a fresh interpreter (this file run as a script), trusting the
system store (``verify=True``) with ``SSL_CERT_FILE`` and
``REQUESTS_CA_BUNDLE`` pointing at certifi's roots plus the kit's root, for
every arm. After one untimed object of its kind (imports, lazily built
module state), `n` objects are built and kept, each after its first token
fetch; the RSS growth divided by `n` is the figure, and the SSLContexts alive
(``gc.get_objects()``) are counted per object. A second pass of `n` more under
`tracemalloc` gives the part of it in the Python heap (the rest is OpenSSL's:
trust store, keys, TLS connections).

``sslcontext``
    ``ssl.create_default_context()``: one context with the system store, the
    reference of the goal.
``ours``
    ``MtlsOAuth2(token_url, client_id, cert_pem, key_pem, verify=True)`` and
    ``token_info()`` (requests, httpx). The same PEM each time: mtls-auth
    parses it once per process (see `ClientCertificate.from_pem`).
``floor``
    requests: a ``Session`` with ``cert=(crt, key)`` temp files and
    ``verify=True`` that POSTed to the token endpoint; httpx: an
    ``httpx.Client(cert=..., verify=True)`` that did.
``authlib``
    ``OAuth2Session`` / ``OAuth2Client`` with those files after ``fetch_token``
    (on httpx: the child hides httpx2, which authlib would take instead).
``shared``
    httpx: one auth used by a sync ``Client`` (``transport=auth.transport()``),
    an ``AsyncClient`` (``auth.async_transport()``) and so both token paths,
    one GET each; kept with their connections.
``derived`` (not a memory arm)
    One auth from the provider tenant's service key (``verify=True``, inside
    `loopback_names`), its first fetch, then `n` ``for_tenant`` and `n`
    ``for_user`` objects with a token each: the SSLContexts before and after.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from typing import Any, Callable

ARMS = ("sslcontext", "ours", "floor", "authlib", "shared")


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _contexts() -> int:
    import ssl

    return sum(1 for obj in gc.get_objects() if isinstance(obj, ssl.SSLContext))


def _temp_pem(text: str) -> str:
    import tempfile

    handle, path = tempfile.mkstemp(suffix=".pem")
    with os.fdopen(handle, "w") as file:
        file.write(text)
    return path


def _maker(arm: str, family: str, p: dict[str, Any], keep: list[Any]) -> Callable[[], None]:
    """What builds one object of `arm` (kept in `keep`)."""
    form = {"grant_type": "client_credentials", "client_id": p["client_id"]}
    if arm == "sslcontext":
        import ssl

        return lambda: keep.append(ssl.create_default_context())
    if arm == "ours":
        if family == "requests":
            from mtls_auth.requests import MtlsOAuth2
        else:
            from mtls_auth.httpx import MtlsOAuth2  # type: ignore[assignment]

        def ours() -> None:
            auth = MtlsOAuth2(p["token_url"], p["client_id"], p["cert_pem"], p["key_pem"])
            auth.token_info()
            keep.append(auth)

        return ours
    files = (_temp_pem(p["cert_pem"]), _temp_pem(p["key_pem"]))
    keep.append(files)
    if arm == "floor" and family == "requests":
        import requests

        def floor_requests() -> None:
            session = requests.Session()
            session.cert = files
            session.verify = True
            session.post(p["token_url"], data=form, timeout=10).raise_for_status()
            keep.append(session)

        return floor_requests
    if arm == "floor":
        import warnings

        import httpx

        def floor_httpx() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                client = httpx.Client(cert=files, verify=True)
            client.post(p["token_url"], data=form).raise_for_status()
            keep.append(client)

        return floor_httpx
    if arm == "authlib" and family == "requests":
        from authlib.integrations.requests_client import OAuth2Session

        def authlib_requests() -> None:
            session = OAuth2Session(p["client_id"], token_endpoint_auth_method="none")
            session.cert = files
            session.fetch_token(p["token_url"], grant_type="client_credentials", timeout=10)
            keep.append(session)

        return authlib_requests
    import warnings

    # authlib builds on httpx2 whenever it is importable; this process measures
    # authlib on httpx, the library the floor and mtls-auth use here.
    sys.modules.setdefault("httpx2", None)  # type: ignore[arg-type]
    import authlib.deprecate  # noqa: F401 - its "always" filter first: "ignore" wins

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from authlib.integrations.httpx_client import OAuth2Client

    def authlib_httpx() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            client = OAuth2Client(p["client_id"], token_endpoint_auth_method="none", cert=files)
        client.fetch_token(p["token_url"], grant_type="client_credentials")
        keep.append(client)

    return authlib_httpx


def _measure(build: Callable[[], None], n: int) -> dict[str, Any]:
    """RSS and SSLContexts per object over `n` objects, then the traced heap over `n` more."""
    import tracemalloc

    build()  # untimed: imports and lazily built state
    gc.collect()
    rss, contexts = _rss(), _contexts()
    for _ in range(n):
        build()
    gc.collect()
    rss_growth, contexts_growth = _rss() - rss, _contexts() - contexts
    tracemalloc.start(1)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    for _ in range(n):
        build()
    gc.collect()
    traced_growth = tracemalloc.get_traced_memory()[0] - traced
    tracemalloc.stop()
    return {
        "rss_bytes": rss_growth / n,
        "traced_bytes": traced_growth / n,
        "contexts": contexts_growth / n,
        "n": n,
    }


def _shared(p: dict[str, Any], n: int) -> dict[str, Any]:
    """httpx: one auth serving a sync client, an async client and its transports."""
    import asyncio

    import httpx

    from mtls_auth.httpx import MtlsOAuth2

    keep: list[Any] = []

    async def one() -> None:
        auth = MtlsOAuth2(p["token_url"], p["client_id"], p["cert_pem"], p["key_pem"])
        sync = httpx.Client(auth=auth, transport=auth.transport())
        sync.get(p["resource_url"]).raise_for_status()
        client = httpx.AsyncClient(auth=auth, transport=auth.async_transport())
        (await client.get(p["resource_url"])).raise_for_status()
        keep.append((auth, sync, client))

    async def main() -> dict[str, Any]:
        # Inside one event loop: the per-loop token client lives as long as it.
        import tracemalloc

        await one()
        gc.collect()
        rss, contexts = _rss(), _contexts()
        for _ in range(n):
            await one()
        gc.collect()
        rss_growth, contexts_growth = _rss() - rss, _contexts() - contexts
        tracemalloc.start(1)
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0]
        for _ in range(n):
            await one()
        gc.collect()
        traced_growth = tracemalloc.get_traced_memory()[0] - traced
        tracemalloc.stop()
        return {
            "rss_bytes": rss_growth / n,
            "traced_bytes": traced_growth / n,
            "contexts": contexts_growth / n,
            "n": n,
        }

    return asyncio.run(main())


def _derived(p: dict[str, Any], family: str, n: int) -> dict[str, Any]:
    """SSLContexts alive before and after `n` tenant and `n` user objects with tokens."""
    from mtls_auth.testing import loopback_names

    if family == "requests":
        from mtls_auth.requests import MtlsOAuth2
    else:
        from mtls_auth.httpx import MtlsOAuth2  # type: ignore[assignment]

    with loopback_names():
        auth = MtlsOAuth2.from_binding(p["binding"])
        auth.token_info()
        gc.collect()
        before = _contexts()
        kept = [auth.for_tenant(f"tenant-{i}") for i in range(n)]
        kept += [auth.for_user(jwt) for jwt in p["jwts"][:n]]
        for derived in kept:
            derived.token_info()
        gc.collect()
        after = _contexts()
        auth.close()
    return {"contexts_before": before, "contexts_after": after, "derived": len(kept)}


def _child(arm: str, family: str, n: int) -> None:
    p = json.loads(sys.stdin.read())
    keep: list[Any] = []
    try:
        if arm == "shared":
            result = _shared(p, n)
        elif arm == "derived":
            result = _derived(p, family, n)
        else:
            result = _measure(_maker(arm, family, p, keep), n)
    finally:
        for item in keep:
            if isinstance(item, tuple):
                for path in item:
                    os.unlink(path)
    print(json.dumps(result))


# -- the parent ------------------------------------------------------------------------


def _arm_run(arm: str, family: str, n: int, payload: str, env: dict[str, str]) -> dict[str, Any]:
    import subprocess

    done = subprocess.run(
        [sys.executable, __file__, arm, family, str(n)],
        input=payload,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"footprint {arm}/{family} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(server: Any, endpoint: Any, *, n: int, rounds: int, derived: int) -> dict[str, Any]:
    """{"memory": {family: {arm: {...}}}, "derived": {family: {...}}}."""
    import importlib.util
    import shutil
    import statistics
    import tempfile

    import certifi

    folder = tempfile.mkdtemp(prefix="mtls-auth-bench-footprint-")
    try:
        bundle = os.path.join(folder, "system-store.pem")
        with open(certifi.where()) as source, open(bundle, "w") as handle:
            handle.write(source.read().rstrip("\n") + "\n" + endpoint.ca_pem)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("SSL_CERT_DIR", "CURL_CA_BUNDLE", "PYTHONDONTWRITEBYTECODE")
        }
        env.update(
            SSL_CERT_FILE=bundle,
            REQUESTS_CA_BUNDLE=bundle,
            PYTHONPYCACHEPREFIX=os.path.join(folder, "pycache"),
        )
        payload = json.dumps(
            {
                "token_url": endpoint.token_url,
                "resource_url": endpoint.resource_url,
                "client_id": endpoint.client_id,
                "cert_pem": endpoint.cert_pem,
                "key_pem": endpoint.key_pem,
                "binding": server.tenant_binding("provider"),
                "jwts": server.user_tokens("provider", 0, derived),
            }
        )
        have_authlib = importlib.util.find_spec("authlib") is not None
        plan = [("sslcontext", "-")]
        for family in ("requests", "httpx"):
            plan += [(arm, family) for arm in ("ours", "floor", "authlib")]
        plan.append(("shared", "httpx"))
        if not have_authlib:
            plan = [(arm, family) for arm, family in plan if arm != "authlib"]
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in range(rounds):
            shift = r % len(plan)
            for arm, family in plan[shift:] + plan[:shift]:
                runs.setdefault((arm, family), []).append(_arm_run(arm, family, n, payload, env))
        derived_results = {
            family: _arm_run("derived", family, derived, payload, env)
            for family in ("requests", "httpx")
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    memory: dict[str, Any] = {}
    for (arm, family), outcomes in runs.items():
        memory.setdefault(family, {})[arm] = {
            key: statistics.median(o[key] for o in outcomes)
            for key in ("rss_bytes", "traced_bytes", "contexts")
        } | {"n": n, "rounds": len(outcomes)}
    return {"memory": memory, "derived": derived_results}


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))

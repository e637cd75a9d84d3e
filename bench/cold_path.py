"""k. The cold first request from PEM, each run in a fresh interpreter.

One run: build the auth from the certificate and key as PEM text (what a
binding carries), fetch a token over mTLS, send one GET to the
certificate-protected resource, in a new ``python`` process. Three arms, side
by side in every round (in an order rotated each round):

``floor``
    The hand-written way: the certificate and key written to temp files
    (unlinked at the end), ``requests.post(token_url, cert=(crt, key),
    verify=...)`` then ``requests.get(resource, cert=..., headers=bearer)``;
    httpx: one ``httpx.Client(cert=(crt, key), verify=...)`` for both. (With
    a private CA httpx gets ``verify=ssl.create_default_context(cafile=ca)``:
    httpx 0.28 given a CA *path* returns a context without the client
    certificate, silently dropping ``cert=``.)
``ours``
    ``MtlsOAuth2(token_url, client_id, cert_pem, key_pem, verify=...)`` on a
    ``requests.Session`` with ``auth.adapter()`` mounted / an ``httpx.Client``
    with ``auth.transport()``.
``authlib``
    The same temp files; ``OAuth2Session`` / ``OAuth2Client`` with
    ``token_endpoint_auth_method="none"``, ``cert`` and ``verify``;
    ``fetch_token(grant_type="client_credentials")``, then the GET. authlib
    builds its httpx clients on httpx2 whenever that is importable; the httpx
    arm hides httpx2 in its child, so authlib runs on httpx like the others.

The token endpoint is ``https://localhost:PORT`` and the resource
``https://127.0.0.1:PORT`` (two hosts, as in production: every arm opens two
TLS connections). Trust is the private CA (a file, for every arm) or the
system store (``verify=True``): then ``SSL_CERT_FILE`` (OpenSSL, httpx,
mtls-auth) and ``REQUESTS_CA_BUNDLE`` (requests, which otherwise uses certifi)
point at one bundle, certifi's roots plus the kit's root, for every arm.

Each child reports two times: its imports (from the first line of the arm to
the end of its imports: requests, or httpx with the httpcore it imports at its
first ``Client``, mtls_auth, authlib; the interpreter's own start is in
neither) and the work after them (build, fetch, GET; for mtls-auth that
includes the deferred import of cryptography, which the first PEM parse
needs). The figures are the medians over rounds, the
ratios the medians of per-round ratios to the floor. The children read
bytecode from a private cache warmed by an untimed first run of every arm.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

ARMS = ("floor", "ours", "authlib")
FAMILIES = ("requests", "httpx")
TRUSTS = ("private CA", "system store")
_FORM = "grant_type=client_credentials&client_id="


# -- the child: one cold run -----------------------------------------------------------


def _temp_pem(text: str) -> str:
    import tempfile

    handle, path = tempfile.mkstemp(suffix=".pem")
    with os.fdopen(handle, "w") as file:
        file.write(text)
    return path


def _floor_requests(p: dict[str, Any], verify: Any, mark: Callable[[], None]) -> int:
    import tempfile  # noqa: F401 - the floor's own imports are timed with it

    import requests

    mark()
    crt, key = _temp_pem(p["cert_pem"]), _temp_pem(p["key_pem"])
    try:
        answer = requests.post(
            p["token_url"],
            data={"grant_type": "client_credentials", "client_id": p["client_id"]},
            cert=(crt, key),
            verify=verify,
            timeout=10,
        )
        token = answer.json()["access_token"]
        response = requests.get(
            p["resource_url"],
            headers={"Authorization": f"Bearer {token}"},
            cert=(crt, key),
            verify=verify,
            timeout=10,
        )
        return int(response.status_code)
    finally:
        os.unlink(crt)
        os.unlink(key)


def _httpx_verify(verify: Any) -> Any:
    """A CA path as the SSLContext httpx would make of it, which keeps ``cert=``."""
    import ssl

    return verify if verify is True else ssl.create_default_context(cafile=verify)


def _floor_httpx(p: dict[str, Any], verify: Any, mark: Callable[[], None]) -> int:
    import tempfile  # noqa: F401
    import warnings

    import httpcore  # noqa: F401 - httpx imports it at its first Client
    import httpx

    mark()
    verify = _httpx_verify(verify)
    crt, key = _temp_pem(p["cert_pem"]), _temp_pem(p["key_pem"])
    try:
        with warnings.catch_warnings():
            # httpx 0.28 prefers verify=<SSLContext> with the chain loaded;
            # cert= still works (and loads it into that context).
            warnings.simplefilter("ignore", DeprecationWarning)
            client = httpx.Client(cert=(crt, key), verify=verify)
        with client:
            answer = client.post(
                p["token_url"],
                data={"grant_type": "client_credentials", "client_id": p["client_id"]},
            )
            token = answer.json()["access_token"]
            response = client.get(p["resource_url"], headers={"Authorization": f"Bearer {token}"})
            return int(response.status_code)
    finally:
        os.unlink(crt)
        os.unlink(key)


def _ours_requests(p: dict[str, Any], verify: Any, mark: Callable[[], None]) -> int:
    import requests

    from mtls_auth.requests import MtlsOAuth2

    mark()
    auth = MtlsOAuth2(p["token_url"], p["client_id"], p["cert_pem"], p["key_pem"], verify=verify)
    with requests.Session() as session:
        session.auth = auth
        session.mount("https://", auth.adapter())
        return int(session.get(p["resource_url"], timeout=10).status_code)


def _ours_httpx(p: dict[str, Any], verify: Any, mark: Callable[[], None]) -> int:
    import httpcore  # noqa: F401 - httpx imports it at its first Client
    import httpx

    from mtls_auth.httpx import MtlsOAuth2

    mark()
    auth = MtlsOAuth2(p["token_url"], p["client_id"], p["cert_pem"], p["key_pem"], verify=verify)
    with httpx.Client(auth=auth, transport=auth.transport()) as client:
        return int(client.get(p["resource_url"]).status_code)


def _authlib_requests(p: dict[str, Any], verify: Any, mark: Callable[[], None]) -> int:
    import tempfile  # noqa: F401

    from authlib.integrations.requests_client import OAuth2Session

    mark()
    crt, key = _temp_pem(p["cert_pem"]), _temp_pem(p["key_pem"])
    try:
        session = OAuth2Session(p["client_id"], token_endpoint_auth_method="none")
        session.cert = (crt, key)
        with session:
            # verify= on each call: REQUESTS_CA_BUNDLE would beat session.verify.
            session.fetch_token(
                p["token_url"], grant_type="client_credentials", timeout=10, verify=verify
            )
            return int(session.get(p["resource_url"], timeout=10, verify=verify).status_code)
    finally:
        os.unlink(crt)
        os.unlink(key)


def _authlib_httpx(p: dict[str, Any], verify: Any, mark: Callable[[], None]) -> int:
    import tempfile  # noqa: F401
    import warnings

    import httpcore  # noqa: F401 - httpx imports it at its first Client

    # authlib builds on httpx2 whenever it is importable; this process measures
    # authlib on httpx, the library the floor and mtls-auth use here.
    sys.modules.setdefault("httpx2", None)  # type: ignore[arg-type]
    import authlib.deprecate  # noqa: F401 - its "always" filter first: "ignore" wins

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # authlib 1.7+: "use httpx2"; httpx still works
        from authlib.integrations.httpx_client import OAuth2Client

    mark()
    verify = _httpx_verify(verify)
    crt, key = _temp_pem(p["cert_pem"]), _temp_pem(p["key_pem"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            client = OAuth2Client(
                p["client_id"], token_endpoint_auth_method="none", cert=(crt, key), verify=verify
            )
        with client:
            client.fetch_token(p["token_url"], grant_type="client_credentials")
            return int(client.get(p["resource_url"]).status_code)
    finally:
        os.unlink(crt)
        os.unlink(key)


_RUNNERS: dict[tuple[str, str], Callable[[dict[str, Any], Any, Callable[[], None]], int]] = {
    ("floor", "requests"): _floor_requests,
    ("floor", "httpx"): _floor_httpx,
    ("ours", "requests"): _ours_requests,
    ("ours", "httpx"): _ours_httpx,
    ("authlib", "requests"): _authlib_requests,
    ("authlib", "httpx"): _authlib_httpx,
}


def _child(arm: str, family: str, trust: str) -> None:
    p = json.loads(sys.stdin.read())
    verify: Any = True if trust == "system store" else p["ca_file"]
    marks: list[float] = []
    start = time.perf_counter()
    status = _RUNNERS[arm, family](p, verify, lambda: marks.append(time.perf_counter()))
    end = time.perf_counter()
    print(
        json.dumps(
            {
                "imports_ms": (marks[0] - start) * 1e3,
                "work_ms": (end - marks[0]) * 1e3,
                "status": status,
                "cryptography": "cryptography" in sys.modules,
            }
        )
    )


# -- the parent ------------------------------------------------------------------------


def _cold_run(
    arm: str, family: str, trust: str, payload: str, env: dict[str, str]
) -> dict[str, Any]:
    import subprocess

    done = subprocess.run(
        [sys.executable, __file__, arm, family, trust],
        input=payload,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cold run {arm}/{family}/{trust} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def available_arms() -> list[str]:
    import importlib.util

    return [arm for arm in ARMS if arm != "authlib" or importlib.util.find_spec("authlib")]


def run(endpoint: Any, rounds: int) -> dict[str, Any]:
    """{family: {trust: {arm: {work_ms, total_ms, ratio_work, ratio_total, ...}}}}."""
    import shutil
    import statistics
    import tempfile

    import certifi

    folder = tempfile.mkdtemp(prefix="mtls-auth-bench-cold-")
    try:
        ca_file = os.path.join(folder, "private-ca.pem")
        with open(ca_file, "w") as handle:
            handle.write(endpoint.ca_pem)
        bundle = os.path.join(folder, "system-store.pem")
        with open(certifi.where()) as source, open(bundle, "w") as handle:
            handle.write(source.read().rstrip("\n") + "\n" + endpoint.ca_pem)
        env = {
            k: v
            for k, v in os.environ.items()
            if k
            not in (
                "PYTHONDONTWRITEBYTECODE",
                "SSL_CERT_FILE",
                "SSL_CERT_DIR",
                "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE",
            )
        }
        env["PYTHONPYCACHEPREFIX"] = os.path.join(folder, "pycache")
        envs = {
            "private CA": env,
            "system store": {**env, "SSL_CERT_FILE": bundle, "REQUESTS_CA_BUNDLE": bundle},
        }
        payload = json.dumps(
            {
                "token_url": endpoint.token_url,
                "resource_url": endpoint.resource_url.replace("//localhost:", "//127.0.0.1:"),
                "client_id": endpoint.client_id,
                "cert_pem": endpoint.cert_pem,
                "key_pem": endpoint.key_pem,
                "ca_file": ca_file,
            }
        )
        arms = available_arms()
        runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for family in FAMILIES:  # untimed: bytecode cached, every path checked once
            for trust in TRUSTS:
                for arm in arms:
                    _cold_run(arm, family, trust, payload, envs[trust])
        for r in range(rounds):
            for family in FAMILIES:
                for trust in TRUSTS:
                    order = arms[r % len(arms) :] + arms[: r % len(arms)]
                    if (r // len(arms)) % 2:
                        order.reverse()
                    for arm in order:
                        outcome = _cold_run(arm, family, trust, payload, envs[trust])
                        runs.setdefault((family, trust, arm), []).append(outcome)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results: dict[str, Any] = {}
    for family in FAMILIES:
        for trust in TRUSTS:
            floor = runs[family, trust, "floor"]
            entry: dict[str, Any] = {}
            for arm in arms:
                mine = runs[family, trust, arm]
                work = [o["work_ms"] for o in mine]
                total = [o["work_ms"] + o["imports_ms"] for o in mine]
                floor_work = [o["work_ms"] for o in floor]
                floor_total = [o["work_ms"] + o["imports_ms"] for o in floor]
                entry[arm] = {
                    "work_ms": statistics.median(work),
                    "imports_ms": statistics.median(o["imports_ms"] for o in mine),
                    "total_ms": statistics.median(total),
                    "ratio_work": statistics.median(a / b for a, b in zip(work, floor_work)),
                    "ratio_total": statistics.median(a / b for a, b in zip(total, floor_total)),
                    "failed": sum(1 for o in mine if o["status"] != 200),
                    "runs": len(mine),
                }
            results.setdefault(family, {})[trust] = entry
    return results


if __name__ == "__main__":
    _child(*sys.argv[1:4])

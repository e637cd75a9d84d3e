"""`allowed_hosts` compares hosts in one normal form on both sides: case, trailing dot, IDNA.

``bücher.example`` and ``xn--bcher-kva.example`` are the same host, whichever
form the configuration and the request use; so are ``API.Example.com.`` and
``api.example.com``. Wildcards (``*.example.com``) normalise their suffix the
same way. Anything else stays refused: the check fails closed.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import requests

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import InsecureTransportError
from mtls_auth._destinations import Destinations
from mtls_auth._urls import normal_host
from mtls_auth.testing import TokenServer

SAME = [
    ("bücher.example", "xn--bcher-kva.example"),
    ("xn--bcher-kva.example", "bücher.example"),
    ("BÜCHER.example.", "xn--bcher-kva.example"),
    ("API.Example.COM.", "api.example.com"),
    ("*.bücher.example", "shop.xn--bcher-kva.example"),
    ("*.xn--bcher-kva.example", "shop.bücher.example"),
]
DIFFERENT = [
    ("bücher.example", "bucher.example"),
    ("*.bücher.example", "xn--bcher-kva.example"),
    ("api.example.com", "api.example.com.evil.example"),
    ("*.example.com", "example.com.evil.example"),
]


@pytest.mark.parametrize(("allowed", "host"), SAME)
def test_the_same_host_in_another_form_is_allowed(allowed: str, host: str) -> None:
    destinations = Destinations([allowed], allow_http_loopback=False)
    destinations.check("https", host)
    destinations.check_url(f"https://{host}/path")


@pytest.mark.parametrize(("allowed", "host"), DIFFERENT)
def test_other_hosts_stay_refused(allowed: str, host: str) -> None:
    destinations = Destinations([allowed], allow_http_loopback=False)
    with pytest.raises(InsecureTransportError, match="allowed_hosts"):
        destinations.check("https", host)


def test_normal_form() -> None:
    assert normal_host("Bücher.Example.") == "xn--bcher-kva.example"
    assert normal_host("xn--bcher-kva.example") == "xn--bcher-kva.example"
    assert normal_host("[::1]") == "[::1]"
    # A name IDNA cannot encode stays as it is (lower case): it matches only itself.
    odd = "a" * 70 + ".ü"
    assert normal_host(odd.upper()) == odd.lower()


@pytest.mark.parametrize("kind", ["requests", "httpx"])
@pytest.mark.parametrize("allowed", ["LOCALHOST.", "localhost", "Localhost"])
def test_allowed_hosts_in_any_case_reach_the_real_server(
    kind: str,
    allowed: str,
    mtls_server: TokenServer,
    mtls_xsuaa_binding: dict[str, Any],
    mtls_auth_kwargs: dict[str, Any],
) -> None:
    module = mrequests if kind == "requests" else mhttpx
    auth = module.MtlsOAuth2.from_binding(
        mtls_xsuaa_binding, allowed_hosts=[allowed], **mtls_auth_kwargs
    )
    if kind == "requests":
        with requests.Session() as session:
            session.mount(mtls_server.url, auth.adapter())
            status = session.get(mtls_server.resource_url, auth=auth, timeout=10).status_code
    else:
        with httpx.Client(auth=auth, transport=auth.transport()) as client:
            status = client.get(mtls_server.resource_url).status_code
    assert status == 200
    auth.close()

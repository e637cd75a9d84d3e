"""`repr()` and `str()` never raise, on every public object, even a half-built one.

A constructor that fails half way leaves an object without its attributes; it
still shows up in the frames error reporters capture, and a repr that raised
there would crash the report (``TracebackException(capture_locals=True)``).
Each public class of the library and the test kit is made without running its
constructor and rendered.
"""

from __future__ import annotations

import importlib
import inspect
import traceback
from typing import Any

import pytest

import mtls_auth
from mtls_auth import MtlsAuthError

PUBLIC_MODULES = [
    "mtls_auth",
    "mtls_auth.requests",
    "mtls_auth.httpx",
    "mtls_auth.credstore",
    "mtls_auth.credstore.requests",
    "mtls_auth.credstore.httpx",
    "mtls_auth.testing",
]


def _public_classes() -> list[type]:
    found: dict[str, type] = {}
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for attribute in getattr(module, "__all__", []):
            value = getattr(module, attribute)
            if inspect.isclass(value) and not issubclass(value, BaseException):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[key] for key in sorted(found)]


CLASSES = _public_classes()


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__qualname__ for c in CLASSES])
def test_repr_and_str_of_a_half_built_object_do_not_raise(cls: type) -> None:
    try:
        obj = object.__new__(cls)
    except TypeError:
        obj = cls.__new__(cls)
    for render in (repr, str):
        text = render(obj)
        assert isinstance(text, str)
        assert cls.__name__ in text or text.startswith(("<", cls.__name__))


def test_there_are_public_classes_to_check() -> None:
    names = {c.__name__ for c in CLASSES}
    assert {"MtlsOAuth2", "MtlsAdapter", "ClientCertificate", "PayloadCipher"} <= names
    assert {"TokenServer", "Fault", "PKI", "FakeClock"} <= names


@pytest.mark.parametrize("module_name", ["mtls_auth.requests", "mtls_auth.httpx"])
def test_a_failed_constructor_can_be_reported_with_its_locals(module_name: str) -> None:
    module = importlib.import_module(module_name)
    with pytest.raises(MtlsAuthError) as caught:
        module.MtlsOAuth2("https://auth.example/oauth/token", "client", None, key="x")
    report = traceback.TracebackException.from_exception(caught.value, capture_locals=True)
    assert "MtlsAuthError" in "".join(report.format()) or caught.value.args


def test_the_insecure_marker_renders() -> None:
    assert repr(mtls_auth.INSECURE_SKIP_VERIFY) == "INSECURE_SKIP_VERIFY"


def _constructed_objects() -> list[Any]:
    from mtls_auth.testing import FakeClock

    return [FakeClock(), mtls_auth.RetryPolicy()]


@pytest.mark.parametrize("obj", _constructed_objects(), ids=lambda o: type(o).__name__)
def test_constructed_objects_render(obj: Any) -> None:
    assert type(obj).__name__ in repr(obj)

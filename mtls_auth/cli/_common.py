"""What the `mtls-auth` subcommands share: exit codes, the binding argument, the HTTP library."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .. import select_vcap_service

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_WARNING",
    "UsageError",
    "add_tenant_options",
    "binding_input",
    "for_tenant",
    "integration",
    "one_line",
    "verify_option",
]

#: Exit codes, Nagios-style for `check`: 0 ok, 1 warning, 2 error, 3 usage error.
EXIT_OK = 0
EXIT_WARNING = 1
EXIT_ERROR = 2
EXIT_USAGE = 3


class UsageError(ValueError):
    """Arguments that do not make a command (exit 3)."""


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def binding_input(args: argparse.Namespace) -> tuple[Any, str]:
    """The binding the command names (a path, JSON text or a VCAP entry) and its label."""
    path = getattr(args, "binding", None)
    if args.vcap:
        if path:
            raise UsageError("give either a binding or --vcap, not both")
        label, _, name = args.vcap.partition(":")
        return select_vcap_service(label, name or None), f"VCAP_SERVICES {args.vcap}"
    if not path:
        raise UsageError("a binding (service-key file or directory) or --vcap is required")
    if not path.lstrip().startswith("{") and not os.path.exists(path):
        raise FileNotFoundError(f"no service-key file or binding directory at {path!r}")
    return path, path


def integration() -> Any:
    """`mtls_auth.requests` if requests is installed, else `mtls_auth.httpx`."""
    try:
        from .. import requests as chosen
    except ImportError:
        try:
            from .. import httpx as chosen  # type: ignore[no-redef]
        except ImportError:
            raise ImportError(
                "this needs an HTTP library: pip install mtls-auth[requests] or mtls-auth[httpx]"
            ) from None
    return chosen


def add_tenant_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """--tenant, --zone-id and --app-tid: a token for a subscriber tenant (one at most)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--tenant", metavar="SUBDOMAIN", help=f"{prefix}a subscriber tenant's subdomain"
    )
    group.add_argument("--zone-id", metavar="ID", help=f"{prefix}a tenant's zone id (x-zid)")
    group.add_argument(
        "--app-tid", metavar="ID", help=f"{prefix}an Identity Services tenant id (app_tid)"
    )


def for_tenant(auth: Any, args: argparse.Namespace) -> Any:
    """`auth`, or its tenant's auth when --tenant, --zone-id or --app-tid was given."""
    if args.tenant is not None:
        return auth.for_tenant(args.tenant)
    if args.zone_id is not None:
        return auth.for_tenant(zone_id=args.zone_id)
    if args.app_tid is not None:
        return auth.for_tenant(app_tid=args.app_tid)
    return auth


def verify_option(args: argparse.Namespace) -> Any:
    return args.verify if args.verify else True

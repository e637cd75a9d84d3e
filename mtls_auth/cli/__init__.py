"""The `mtls-auth` command line: `demo`, `check` and `request` (one module each).

* `mtls-auth demo` runs the whole flow on loopback, with a throwaway PKI and
  the same mTLS token server the tests use: no account, no network.
* `mtls-auth check BINDING` diagnoses a service key, a Kubernetes binding
  directory or a `VCAP_SERVICES` entry offline (and, with `--fetch`, gets a
  token over mTLS and shows only non-secret facts about it). Exit codes: 0 ok,
  1 warning (expiring soon), 2 error, 3 usage error.
* `mtls-auth request URL --binding B` is a curl-like authenticated call.

Errors are one line on stderr and a non-zero exit; `--debug` shows the
traceback. Nothing secret is ever printed. Built on `argparse` from the
standard library: three subcommands do not justify a dependency. The commands
use the public API only; `demo` is the one place the library imports its test
kit (`mtls_auth.testing`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import MtlsAuthError, __version__
from ._common import EXIT_ERROR, EXIT_USAGE, UsageError, add_tenant_options, one_line

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mtls-auth",
        description="OAuth2 client credentials over mutual TLS: demo, binding check, requests.",
    )
    parser.add_argument("--version", action="version", version=f"mtls-auth {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and DEBUG logs (still no secrets)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = commands.add_parser(
        "demo", help="run the whole flow on loopback with a throwaway PKI (no account needed)"
    )
    demo.add_argument("--calls", type=int, default=20, help="calls per client (default 20)")

    check = commands.add_parser(
        "check",
        help="diagnose a binding offline; exit 0 ok, 1 warning, 2 error",
        description=(
            "Diagnose a service-key file, a Kubernetes binding directory or a VCAP_SERVICES "
            "entry. Exit codes: 0 ok, 1 warning (certificate expiring soon), 2 error, "
            "3 usage error."
        ),
    )
    check.add_argument("binding", nargs="?", help="service-key JSON file or binding directory")
    check.add_argument("--vcap", metavar="LABEL[:NAME]", help="read VCAP_SERVICES instead")
    check.add_argument(
        "--fetch", action="store_true", help="also get a token over mTLS (never printed)"
    )
    check.add_argument("--namespace", help="Credential Store namespace (for --fetch)")
    add_tenant_options(check, "for --fetch: ")
    check.add_argument("--verify", help="CA bundle for the token endpoint (default: system)")
    check.add_argument(
        "--warn-hours",
        type=float,
        default=24.0,
        help="warn when the certificate expires within this many hours (default 24)",
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")

    request = commands.add_parser(
        "request", help="a curl-like call authenticated with a binding's token"
    )
    request.add_argument("url")
    request.add_argument("--binding", help="service-key JSON file or binding directory")
    request.add_argument("--vcap", metavar="LABEL[:NAME]", help="read VCAP_SERVICES instead")
    request.add_argument("-X", "--request", dest="method", default=None, help="HTTP method")
    request.add_argument(
        "-H", "--header", action="append", default=[], help="extra header 'Name: value'"
    )
    request.add_argument("-d", "--data", help="request body (@file reads a file)")
    request.add_argument("-i", "--include", action="store_true", help="print response headers")
    request.add_argument("--namespace", help="Credential Store namespace")
    add_tenant_options(request)
    request.add_argument("--verify", help="CA bundle (default: system trust store)")
    request.add_argument(
        "--cert-bound",
        action="store_true",
        help="present the client certificate to the resource too (RFC 8705 bound tokens)",
    )
    request.add_argument(
        "--no-decrypt",
        action="store_true",
        help="do not encrypt/decrypt Credential Store payloads",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mtls-auth` console script and `python -m mtls_auth`."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(calls=args.calls)
        if args.command == "check":
            from . import check

            return check.run(args)
        from . import request

        return request.run(args)
    except KeyboardInterrupt:
        print("mtls-auth: interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:
        print(f"mtls-auth {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (MtlsAuthError, ImportError, OSError, ValueError) as exc:
        if args.debug:
            raise
        message = None
        if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
            message = f"{exc.strerror}: {exc.filename!r}"
        print(f"mtls-auth {args.command}: error: {message or one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"mtls-auth {args.command}: unexpected {type(exc).__name__}: {one_line(exc)} "
            "(run with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

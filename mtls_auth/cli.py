"""The `mtls-auth` command: `demo`, `check` and `request`.

* `mtls-auth demo` runs the whole flow on loopback, with a throwaway PKI and
  the same mTLS token server the tests use: no account, no network.
* `mtls-auth check BINDING` diagnoses a service key, a Kubernetes binding
  directory or a `VCAP_SERVICES` entry offline (and, with `--fetch`, gets a
  token over mTLS and shows only non-secret facts about it). Exit codes: 0 ok,
  1 warning (expiring soon), 2 error, 3 usage error.
* `mtls-auth request URL --binding B` is a curl-like authenticated call.

Errors are one line on stderr and a non-zero exit; `--debug` shows the
traceback. Nothing secret is ever printed. Built on `argparse` from the
standard library: three subcommands do not justify a dependency.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__
from ._check import EXIT_ERROR, CheckReport, check_binding, token_facts
from ._errors import MtlsAuthError

__all__ = ["main"]

EXIT_USAGE = 3


class UsageError(ValueError):
    """Arguments that do not make a command (exit 3)."""


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
            from ._demo import run_demo

            return run_demo(calls=args.calls)
        if args.command == "check":
            return _check(args)
        return _request(args)
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
        print(
            f"mtls-auth {args.command}: error: {message or _one_line(exc)}", file=sys.stderr
        )
        return EXIT_ERROR
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"mtls-auth {args.command}: unexpected {type(exc).__name__}: {_one_line(exc)} "
            "(run with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_ERROR


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# -- binding sources -----------------------------------------------------------------


def _binding_input(args: argparse.Namespace) -> tuple[Any, str]:
    from ._binding import select_vcap_service

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


def _integration() -> Any:
    try:
        from . import requests as integration
    except ImportError:
        try:
            from . import httpx as integration  # type: ignore[no-redef]
        except ImportError:
            raise ImportError(
                "this needs an HTTP library: pip install mtls-auth[requests] or mtls-auth[httpx]"
            ) from None
    return integration


def _verify(args: argparse.Namespace) -> Any:
    return args.verify if args.verify else True


# -- check -------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    binding, source = _binding_input(args)
    report, parsed = check_binding(
        binding, warn_before=datetime.timedelta(hours=args.warn_hours), source=source
    )
    if args.fetch and parsed is not None and report.status != "error":
        _fetch(args, binding, report)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report)
    return report.exit_code


def _fetch(args: argparse.Namespace, binding: Any, report: CheckReport) -> None:
    integration = _integration()
    try:
        auth = integration.MtlsOAuth2.from_binding(
            binding, namespace=args.namespace, verify=_verify(args)
        )
        with auth:
            token = auth._core.token(auth._send)
            report.token = token_facts(token.authorization(), auth.certificate, token.lifetime)
    except MtlsAuthError as exc:
        report.error(f"token fetch failed: {_one_line(exc)}")
        return
    if report.token.get("cnf_matches_certificate") is False:
        report.error("the token's cnf x5t#S256 does not match the client certificate")


def _print_report(report: CheckReport) -> None:
    def line(label: str, value: object) -> None:
        if value is not None:
            print(f"  {label:<14}{value}")

    print(f"binding   {report.source}")
    line("kind", report.kind)
    line("client id", report.client_id)
    line("token URL", report.token_url)
    line("subject", report.subject)
    line("issuer", report.issuer)
    if report.not_after is not None:
        days = report.days_left or 0.0
        left = f"{days:.1f} days left" if days >= 0 else f"expired {-days:.1f} days ago"
        line("expires", f"{report.not_after:%Y-%m-%d %H:%M UTC} ({left})")
    line("key", report.key_type)
    line("x5t#S256", report.thumbprint)
    line("chain", None if report.chain_length is None else f"{report.chain_length} certificate(s)")
    if report.binding_expires_at is not None:
        line("binding exp.", f"{report.binding_expires_at:%Y-%m-%d %H:%M UTC}")
    if report.token is not None:
        facts = report.token
        text = f"fetched over mTLS, expires_in {facts['expires_in']}s, {facts['format']}"
        if "scopes" in facts:
            text += f", scopes: {' '.join(facts['scopes']) or '(none)'}"
        if facts.get("cnf_matches_certificate") is not None:
            text += ", cnf matches the certificate" if facts["cnf_matches_certificate"] else (
                ", cnf does NOT match the certificate"
            )
        line("token", text)
    for finding in report.findings:
        print(f"  {finding.level.upper():<14}{finding.message}")
    print(f"status    {report.status.upper()}")


# -- request ---------------------------------------------------------------------------


def _request(args: argparse.Namespace) -> int:
    binding, _ = _binding_input(args)
    integration = _integration()
    verify = _verify(args)
    body: bytes | None = None
    if args.data is not None:
        if args.data.startswith("@"):
            with open(args.data[1:], "rb") as handle:
                body = handle.read()
        else:
            body = args.data.encode("utf-8")
    headers: dict[str, str] = {}
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"header {header!r} is not 'Name: value'")
        headers[name.strip()] = value.strip()
    if body is not None and not any(h.lower() == "content-type" for h in headers):
        headers["Content-Type"] = "application/json"
    method = (args.method or ("POST" if body is not None else "GET")).upper()

    auth = integration.MtlsOAuth2.from_binding(binding, namespace=args.namespace, verify=verify)
    cipher = None
    parsed = auth._core.binding
    if (
        not args.no_decrypt
        and parsed is not None
        and parsed.kind == "credstore"
        and parsed.encryption
    ):
        try:
            from ._credstore import PayloadCipher

            cipher = PayloadCipher.from_encryption(parsed.encryption)
        except ImportError:
            print(
                "mtls-auth request: note: install mtls-auth[credstore] to decrypt "
                "Credential Store payloads; showing them as sent",
                file=sys.stderr,
            )
    with auth:
        status, reason, response_headers, content = _send(
            integration, auth, method, args.url, headers, body, args.cert_bound, verify, cipher
        )
    if args.include:
        print(f"HTTP {status} {reason}")
        for name, value in response_headers:
            print(f"{name}: {value}")
        print()
    sys.stdout.buffer.write(content)
    if content and not content.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()
    return 0 if status < 400 else 1


def _send(
    integration: Any,
    auth: Any,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    cert_bound: bool,
    verify: Any,
    cipher: Any,
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    if integration.__name__.endswith(".requests"):
        import requests

        session = requests.Session()
        session.auth = auth
        if cipher is not None:
            session.mount(
                "https://",
                integration.CredstoreAdapter(auth.certificate, cipher=cipher, verify=verify),
            )
        elif cert_bound:
            session.mount("https://", auth.adapter())
        with session:
            # verify= per request: requests lets REQUESTS_CA_BUNDLE override
            # session.verify, but not an explicit argument.
            response = session.request(
                method, url, headers=headers, data=body, timeout=30, verify=verify
            )
            return (
                response.status_code,
                response.reason or "",
                list(response.headers.items()),
                response.content,
            )
    import httpx

    transport: Any = auth.transport() if cert_bound or cipher is not None else None
    if cipher is not None:
        transport = integration.CredstoreTransport(transport, cipher)
    client_verify: Any = True
    if verify is not True:
        from ._certificate import build_ssl_context

        client_verify = build_ssl_context(verify)
    with httpx.Client(auth=auth, transport=transport, verify=client_verify, timeout=30) as client:
        answer = client.request(method, url, headers=headers, content=body)
        return (
            answer.status_code,
            answer.reason_phrase,
            list(answer.headers.items()),
            answer.content,
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

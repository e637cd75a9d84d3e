"""`mtls-auth check`: diagnose a binding offline, and with `--fetch` get a token over mTLS."""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from .. import CheckReport, MtlsAuthError, check_binding
from ._common import binding_input, for_tenant, integration, one_line, verify_option

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """`mtls-auth check`: the report, printed or as JSON; the exit code says its status."""
    binding, source = binding_input(args)
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
    try:
        auth = integration().MtlsOAuth2.from_binding(
            binding, namespace=args.namespace, verify=verify_option(args)
        )
        with auth:
            report.set_token(for_tenant(auth, args).token_info())
    except MtlsAuthError as exc:
        report.error(f"token fetch failed: {one_line(exc)}")
        return
    if report.token is not None and report.token.get("cnf_matches_certificate") is False:
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
            text += (
                ", cnf matches the certificate"
                if facts["cnf_matches_certificate"]
                else (", cnf does NOT match the certificate")
            )
        line("token", text)
    for finding in report.findings:
        print(f"  {finding.level.upper():<14}{finding.message}")
    print(f"status    {report.status.upper()}")

"""`revoc crl ...`: CRL facts for operators (issue 13): `urls` (what to disclose to CCADB)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

import asyncpg

from revoc.settings import Settings


def register(commands: argparse._SubParsersAction[Any]) -> None:
    from revoc.cli import _add_settings  # the shared flag builder; imported late (no cycle)

    crl = commands.add_parser("crl", help="CRL URLs to disclose and shard planning")
    crl_commands = crl.add_subparsers(dest="crl_command", required=True, metavar="COMMAND")
    urls = crl_commands.add_parser(
        "urls", help="the full-CRL URLs CCADB asks a CA to disclose",
        description="Print the full-CRL URLs of an issuer that CCADB asks a CA to disclose "
        "(CCADB Policy 6.2): every distribution point URL in its unexpired certificates, plus "
        "its configured shard URLs (or its issuer-wide CRL). One a line, or with --json the "
        "JSON array to paste into CCADB. revoc serve answers the same list at "
        "/crl/{issuer}/urls.json.")
    urls.add_argument("--issuer", required=True, help="registered issuer name (required)")
    urls.add_argument("--json", action="store_true", help="print a JSON array")
    _add_settings(urls, "urls")
    urls.set_defaults(run=run_urls)


def run_urls(settings: Settings, args: argparse.Namespace) -> None:
    from revoc.admin import get_issuer
    from revoc.cli import _in_session
    from revoc.crl_urls import disclosed_urls

    async def listing(conn: asyncpg.Connection) -> list[str]:
        issuer = await get_issuer(conn, args.issuer)  # AdminError (exit 1) when unknown
        now: datetime = datetime.now(UTC)
        found = await disclosed_urls(conn, settings.public_url, now, issuer.id)
        return found.get(issuer.name, [])

    urls = _in_session(settings, listing)
    sys.stdout.write(json.dumps(urls) + "\n" if args.json else "".join(u + "\n" for u in urls))

"""`revoc crl ...`: CRL facts for operators (issue 13): `urls` (what to disclose to CCADB) and
`plan` (how many shards keep each CRL under the size limit)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

import asyncpg

from revoc.settings import Settings


def register(commands: argparse._SubParsersAction[Any]) -> None:
    from revoc.runtime import add_settings as _add_settings

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

    plan = crl_commands.add_parser(
        "plan", help="recommend a shard count from expected volume",
        description="Estimate the size of an issuer's full CRL from the certificates it will "
        "have unexpired at any time (--certificates, or --issued-per-day times --lifetime-days) "
        "and the share of them revoked (--revocation-rate), at the bytes per entry revoc "
        "encodes (serial of --serial-octets, revocationDate, reasonCode), and recommend a "
        "--crl-shards value that keeps every shard under REVOC_CRL_SIZE_LIMIT / --headroom.")
    volume = plan.add_mutually_exclusive_group(required=True)
    volume.add_argument("--certificates", type=_positive, metavar="N",
                        help="unexpired certificates at any time (default: none; this or "
                        "--issued-per-day)")
    volume.add_argument("--issued-per-day", type=_positive, metavar="N",
                        help="certificates issued per day, with --lifetime-days (default: none)")
    plan.add_argument("--lifetime-days", type=_positive, metavar="DAYS", default=None,
                      help="certificate lifetime in days, with --issued-per-day (default: none)")
    plan.add_argument("--revocation-rate", type=_rate, required=True, metavar="RATE",
                      help="share revoked before expiry: 0.02 or 2%% (required)")
    plan.add_argument("--serial-octets", type=_positive, default=16, metavar="N",
                      help="serial length in octets (default 16: 128-bit serials)")
    plan.add_argument("--headroom", type=float, default=2.0, metavar="X",
                      help="keep each shard below the limit divided by this (default 2)")
    plan.add_argument("--json", action="store_true", help="print the estimate as JSON")
    _add_settings(plan, "plan", database=False)
    plan.set_defaults(run=run_plan)


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate (0.02 or 2%)") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1 (0%% and 100%%)")
    return value


def entry_bytes(serial_octets: int) -> int:
    """Bytes of one CRL entry as revoc encodes it: a serial of `serial_octets` octets (high bit
    clear), a UTCTime revocationDate and a reasonCode (keyCompromise)."""
    from revoc.der.crl import encode_crl_entry
    from revoc.model import Reason

    serial = 0x40 << (8 * (serial_octets - 1))
    return len(encode_crl_entry(serial, datetime(2026, 1, 1, tzinfo=UTC), Reason.keyCompromise))


def run_plan(settings: Settings, args: argparse.Namespace) -> None:
    import math

    from revoc.runtime import UsageError

    if args.issued_per_day is not None:
        if args.lifetime_days is None:
            raise UsageError("--issued-per-day needs --lifetime-days")
        certificates = args.issued_per_day * args.lifetime_days
    else:
        certificates = args.certificates
    if args.headroom < 1:
        raise UsageError("--headroom must be at least 1")
    per_entry = entry_bytes(args.serial_octets)
    entries = math.ceil(certificates * args.revocation_rate)
    overhead = 600  # tbsCertList head, extensions, signature: a few hundred bytes at most
    total = entries * per_entry + overhead
    target = settings.crl_size_limit / args.headroom
    shards = max(1, math.ceil(total / target))
    per_shard = math.ceil(entries / shards) * per_entry + overhead
    result = {"certificates": certificates, "revoked_entries": entries,
              "bytes_per_entry": per_entry, "crl_bytes_unsharded": total,
              "size_limit": settings.crl_size_limit, "recommended_shards": shards,
              "bytes_per_shard": per_shard}
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    sys.stdout.write(
        f"{certificates} unexpired certificates, {entries} revoked: {per_entry} bytes per "
        f"entry, {total} bytes in one CRL (limit {settings.crl_size_limit}).\n"
        f"recommended: --crl-shards {shards} (about {per_shard} bytes per shard"
        f"{'; no sharding needed' if shards == 1 else ''})\n")


def run_urls(settings: Settings, args: argparse.Namespace) -> None:
    from revoc.admin import get_issuer
    from revoc.commands import _in_session
    from revoc.crl_urls import disclosed_urls

    async def listing(conn: asyncpg.Connection) -> list[str]:
        issuer = await get_issuer(conn, args.issuer)  # AdminError (exit 1) when unknown
        now: datetime = datetime.now(UTC)
        found = await disclosed_urls(conn, settings.public_url, now, issuer.id)
        return found.get(issuer.name, [])

    urls = _in_session(settings, listing)
    sys.stdout.write(json.dumps(urls) + "\n" if args.json else "".join(u + "\n" for u in urls))

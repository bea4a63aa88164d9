"""Mass revocation: `revoc cert revoke --issuer N --serials-file F --reason R` (issue 13 point 6).

A CA that must revoke many certificates at once (CA/B Forum SC-089 asks for a mass-revocation
plan, CONFORMANCE ROOT-5) gives a file with one hex serial a line (blank lines and `#` comments
ignored). Everything happens in one transaction with no round trip per serial: the lines are
read as a stream, each serial checked and its CRL entry encoded in Python (all share the time,
reason and invalidity date), and sent with COPY into a temporary table; one UPDATE then revokes
every serial not revoked yet, each with its own change_seq, so the presigner's queue and the
publisher see every one; one NOTIFY `<issuer>:*` wakes them.

All or nothing: a malformed line (InputError naming the line, exit 2) or a serial the issuer
never recorded (AdminError with the count and the first one, exit 1) revokes nothing.
Certificates revoked already stay as they are and are counted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from revoc.admin import (
    AdminError,
    InputError,
    _check_reason,
    check_date,
    check_invalidity,
    get_issuer,
    parse_serial,
    parse_time,
    serial_octets,
)
from revoc.clock import Clock, SystemClock, utc_seconds
from revoc.der.crl import encode_crl_entry
from revoc.model import Reason
from revoc.notify import encode_serial_change
from revoc.queries import queries


@dataclass(frozen=True, slots=True)
class MassRevocation:
    serials: int  # distinct serials in the file
    revoked: int  # revoked now
    already: int  # revoked before, left as they were


def _records(lines: Iterable[str], revoked_at: datetime, reason: Reason,
             invalidity: datetime | None) -> Iterator[tuple[int, bytes, bytes]]:
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            value = parse_serial(text)
            octets = serial_octets(value)
        except InputError as exc:
            raise InputError(f"line {number}: {exc}") from None
        yield number, octets, encode_crl_entry(value, revoked_at, reason, invalidity)


async def revoke_serials(conn: asyncpg.Connection, issuer_name: str, lines: Iterable[str],
                         reason: Reason, *, revoked_at: datetime | None = None,
                         invalidity_date: datetime | None = None,
                         clock: Clock | None = None) -> MassRevocation:
    """Revoke every serial in `lines` in one transaction (see the module docstring)."""
    now = utc_seconds((clock or SystemClock()).now())
    issuer = await get_issuer(conn, issuer_name)
    _check_reason(issuer, reason)
    when = check_date(revoked_at, "--revoked-at", now) if revoked_at is not None else now
    invalidity = None
    if invalidity_date is not None:
        invalidity = check_date(invalidity_date, "--invalidity-date", now)
        check_invalidity(invalidity, when, "--invalidity-date")
    q = queries()
    async with conn.transaction():
        await conn.execute(q["mass_revoke_stage_create"])
        await conn.copy_records_to_table(
            "mass_revoke_stage", records=_records(lines, when, reason, invalidity),
            columns=["line", "serial", "crl_entry"])
        check = await conn.fetchrow(q["mass_revoke_check"], issuer.id)
        if check["unknown"]:
            raise AdminError(
                f"{check['unknown']} serial(s) are not known certificates of {issuer.name} "
                f"(first: {check['first_unknown'].upper().lstrip('0') or '0'}); nothing revoked")
        revoked: int = await conn.fetchval(q["mass_revoke_apply"], issuer.id, when, int(reason),
                                           invalidity)
        if revoked:
            await conn.execute(q["notify_cert_changed"], encode_serial_change(issuer.id, None))
    return MassRevocation(serials=check["serials"], revoked=revoked, already=check["already"])


async def revoke_serials_file(conn: asyncpg.Connection, args: argparse.Namespace,
                              reason: Reason) -> str:
    """`revoc cert revoke --serials-file` (called by revoc/commands.py): reads the file as a
    stream; returns the line with the counts, which the caller prints only once the commit is
    acknowledged (revoc/sync_commit.py)."""
    path: str = args.serials_file
    revoked_at = parse_time(args.revoked_at, "--revoked-at") if args.revoked_at else None
    invalidity = (parse_time(args.invalidity_date, "--invalidity-date") if args.invalidity_date
                  else None)
    try:
        # Read line by line while COPY sends them (asyncpg iterates the records synchronously).
        stream = sys.stdin if path == "-" else open(path, encoding="ascii")  # noqa: ASYNC230, SIM115
    except OSError as exc:
        raise InputError(f"--serials-file {path}: {exc.strerror or exc}") from None
    try:
        result = await revoke_serials(conn, args.issuer, stream, reason, revoked_at=revoked_at,
                                      invalidity_date=invalidity)
    except UnicodeDecodeError:
        raise InputError(f"--serials-file {path}: not a text file of hex serials") from None
    finally:
        if stream is not sys.stdin:
            stream.close()
    return (f"revoked {result.revoked} certificate(s) of {args.issuer} ({reason.name}); "
            f"{result.already} already revoked, {result.serials} serial(s) in {path}")

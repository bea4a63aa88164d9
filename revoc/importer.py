"""Bulk import of an OpenSSL CA database (`index.txt`) with COPY.

Each line is tab-separated: status (V valid, R revoked, E expired), expiry time, revocation
field, serial (hex), file name, subject. OpenSSL writes the revocation field as
`time[,reason[,extra]]` where extra is a hold instruction after `certificateHold` or the
compromise time after `keyCompromise` / `CACompromise` (kept as invalidityDate).

Every field is checked before anything is written (issue 10, point 2): serials are hex digits
only, positive and at most 20 octets; times are digits only, real dates from 1950 on, and
revocation and compromise times no later than now plus a small skew, a compromise not after its
revocation. A bad line fails the whole import with `path:line: reason` (exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from revoc.admin import (
    EARLIEST_DATE,
    AdminError,
    InputError,
    check_date,
    check_invalidity,
    checked_serial,
    get_issuer,
    serial_octets,
    shard_of_serial,
)
from revoc.audit_trail import Actor, record
from revoc.clock import Clock, SystemClock
from revoc.der.crl import encode_crl_entry
from revoc.model import BR_ALLOWED_REASONS, Profile, Reason
from revoc.notify import encode_serial_change
from revoc.queries import queries

# From this many rows inserted or updated on, an import ends with VACUUM (ANALYZE) certificates.
VACUUM_FROM_ROWS = 10_000

_STAGE_COLUMNS = ["serial", "not_after", "status", "revoked_at", "reason", "invalidity_date",
                  "crl_entry", "shard"]
StageRow = tuple[bytes, datetime, str, datetime | None, int | None, datetime | None,
                 bytes | None, int | None]

# OpenSSL's spellings (apps/ca.c make_revocation_str) differ in case from RFC 5280's names, and
# three reasons carry a second field: "keyTime,<compromise time>" (keyCompromise),
# "CAkeyTime,<compromise time>" (cACompromise) and "holdInstruction,<OID>" (certificateHold).
_OPENSSL_REASONS = {r.name.lower(): r for r in Reason} | {
    "keytime": Reason.keyCompromise,
    "cakeytime": Reason.cACompromise,
    "holdinstruction": Reason.certificateHold,
}


# ASCII digits only: str.isdigit() and int() also take other scripts' digits.
_ASN1_TIME = re.compile(r"([0-9]{2}|[0-9]{4})([0-9]{10})Z")


def _asn1_time(text: str, what: str) -> datetime:
    """UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ`, as OpenSSL writes them."""
    match = _ASN1_TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"{what} {text!r} is not a time (YYMMDDHHMMSSZ or YYYYMMDDHHMMSSZ)")
    year, rest = int(match[1]), match[2]
    if len(match[1]) == 2:
        year += 2000 if year < 50 else 1900
    try:
        return datetime(year, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8]),
                        int(rest[8:10]), tzinfo=UTC)
    except ValueError as exc:  # month 13, year 0000, ...
        raise ValueError(f"{what} {text} is not a valid date ({exc})") from None


def _revocation_time(text: str, what: str, now: datetime) -> datetime:
    try:
        return check_date(_asn1_time(text, what), what, now, shown=text)
    except InputError as exc:
        raise ValueError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class IndexEntry:
    serial: int
    not_after: datetime
    revoked_at: datetime | None
    reason: Reason | None
    invalidity_date: datetime | None


def parse_index_line(line: str, now: datetime | None = None) -> IndexEntry | None:
    """One index.txt line; None for a blank line. Raises ValueError with the reason.

    `now` bounds revocation and compromise times (plus revoc.admin.FUTURE_SKEW)."""
    now = now or SystemClock().now()
    if not line.strip():
        return None
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) < 4:
        raise ValueError("expected at least 4 tab-separated fields")
    status, expiry, revocation, serial_text = fields[0], fields[1], fields[2], fields[3]
    if status not in ("V", "R", "E"):
        raise ValueError(f"unknown status {status!r} (expected V, R or E)")
    try:
        serial = checked_serial(serial_text, serial_text)
    except InputError as exc:
        raise ValueError(str(exc)) from None
    not_after = _asn1_time(expiry, "expiry time")
    if not_after < EARLIEST_DATE:
        raise ValueError(f"expiry time {expiry} is before 1950-01-01 (RFC 5280 dates start at "
                         "1950)")
    if status != "R":
        return IndexEntry(serial, not_after, None, None, None)
    parts = revocation.split(",")
    revoked_at = _revocation_time(parts[0], "revocation time", now)
    reason = Reason.unspecified
    invalidity: datetime | None = None
    if len(parts) > 1 and parts[1]:
        try:
            reason = _OPENSSL_REASONS[parts[1].lower()]
        except KeyError:
            raise ValueError(f"unknown revocation reason {parts[1]!r}") from None
        if len(parts) > 2 and reason in (Reason.keyCompromise, Reason.cACompromise):
            invalidity = _revocation_time(parts[2], "compromise time", now)
            try:
                check_invalidity(invalidity, revoked_at, f"compromise time {parts[2]}")
            except InputError as exc:
                raise ValueError(str(exc)) from None
    if reason is Reason.removeFromCRL:
        # OpenSSL records a released hold this way; the certificate is good again.
        return IndexEntry(serial, not_after, None, None, None)
    return IndexEntry(serial, not_after, revoked_at, reason, invalidity)


def _stage_rows(path: Path, profile: Profile, shards: int, now: datetime
                ) -> Iterator[StageRow]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            try:
                entry = parse_index_line(line, now)
            except ValueError as exc:
                raise InputError(f"{path}:{number}: {exc}") from None
            if entry is None:
                continue
            shard = shard_of_serial(entry.serial, shards) if shards else None
            serial = serial_octets(entry.serial)
            if entry.reason is None:
                yield (serial, entry.not_after, "good", None, None, None, None, shard)
                continue
            assert entry.revoked_at is not None
            if profile is Profile.BR and entry.reason not in BR_ALLOWED_REASONS:
                raise AdminError(f"{path}:{number}: reason {entry.reason.name} is forbidden "
                                 "for an issuer with the br profile")
            crl_entry = encode_crl_entry(entry.serial, entry.revoked_at, entry.reason,
                                         entry.invalidity_date)
            yield (serial, entry.not_after, "revoked", entry.revoked_at, int(entry.reason),
                   entry.invalidity_date, crl_entry, shard)


CHUNK = 20_000  # lines parsed per step in a worker thread (a few MB of rows)


@dataclass(slots=True)
class _Counts:
    lines: int = 0
    revoked: int = 0


async def _stream(path: Path, profile: Profile, shards: int, now: datetime, counts: _Counts,
                  prefix: tuple[int, ...] = ()) -> AsyncIterator[tuple[object, ...]]:
    """The rows of the file for COPY, parsed CHUNK lines at a time in a worker thread (parsing
    and encoding a million lines takes seconds: off the event loop), the next chunk parsed while
    this one is sent. Memory stays a few chunks whatever the file's size (holding every row, as
    before, took 3.5 GB at 10M lines). A bad line raises InputError in the middle of the COPY:
    the caller's transaction then writes nothing."""
    rows = _stage_rows(path, profile, shards, now)

    def take() -> list[StageRow]:
        try:
            return list(itertools.islice(rows, CHUNK))
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from None

    pending = asyncio.ensure_future(asyncio.to_thread(take))
    try:
        while chunk := await pending:
            pending = asyncio.ensure_future(asyncio.to_thread(take))
            counts.lines += len(chunk)
            counts.revoked += sum(1 for row in chunk if row[2] == "revoked")
            for row in chunk:
                yield (*prefix, *row)
    finally:
        # Left early (a bad line, a failed COPY): the step under way ends on its own (a thread
        # cannot be cancelled); its result or error goes nowhere.
        with contextlib.suppress(Exception):
            await pending


@dataclass(frozen=True, slots=True)
class ImportResult:
    lines: int
    inserted: int
    updated: int
    sharded: bool
    vacuumed: bool = False


async def import_openssl_index(
    conn: asyncpg.Connection, issuer_name: str, path: Path, clock: Clock | None = None,
    actor: Actor | None = None,
) -> ImportResult:
    """Import every line in one transaction: all of the file or nothing.

    Revocations it brings (new revoked rows, or good rows it revokes) are stamped and queued in
    ocsp_pending by the 0004 triggers in this same transaction."""
    issuer = await get_issuer(conn, issuer_name)
    now = (clock or SystemClock()).now()
    if not await asyncio.to_thread(path.is_file):
        raise InputError(f"cannot read {path}: no such file")
    counts = _Counts()
    q = queries()
    async with conn.transaction():
        if await conn.fetchval(q["issuer_has_certificates"], issuer.id):
            inserted, updated = await _merge(
                conn, issuer.id, _stream(path, issuer.profile, issuer.crl_shards, now, counts),
                path)
        else:
            # First import of this issuer: nothing to merge with, so COPY straight into the
            # table (about twice as fast for a million rows); a repeated serial fails the
            # primary key and the whole import.
            try:
                await conn.copy_records_to_table(
                    "certificates", columns=["issuer_id", *_STAGE_COLUMNS],
                    records=_stream(path, issuer.profile, issuer.crl_shards, now, counts,
                                    (issuer.id,)))
            except asyncpg.UniqueViolationError:
                raise InputError(f"{path}: a serial appears more than once") from None
            inserted, updated = counts.lines, 0
        # One row for the whole import (a million rows per certificate would drown the trail);
        # the certificates it revoked carry this transaction's change_xid.
        await record(conn, actor or Actor.cli(), "cert_import", issuer=issuer.name, details={
            "file": str(path), "lines": counts.lines, "inserted": inserted,
            "updated": updated, "revoked": counts.revoked})
        await conn.execute(q["notify_cert_changed"], encode_serial_change(issuer.id, None))
    vacuumed = False
    if inserted + updated >= VACUUM_FROM_ROWS and not conn.is_in_transaction():
        # What autovacuum would do minutes later, done now: sets the hint bits and the
        # visibility map of the pages just written (the CRL publisher's entries come from an
        # index-only scan, migration 0011, and would otherwise visit every heap page the first
        # time) and gives the planner statistics of the new rows. A role that does not own the
        # table gets a warning from PostgreSQL and no vacuum: never an error.
        await conn.execute(q["import_vacuum"])
        vacuumed = True
    return ImportResult(counts.lines, inserted, updated, bool(issuer.crl_shards), vacuumed)


async def _merge(conn: asyncpg.Connection, issuer_id: int,
                 rows: AsyncIterator[tuple[object, ...]], path: Path) -> tuple[int, int]:
    q = queries()
    await conn.execute(q["import_stage_create"])
    await conn.copy_records_to_table("import_stage", records=rows, columns=_STAGE_COLUMNS)
    duplicates = await conn.fetchval(q["import_duplicate_serials"])
    if duplicates:
        raise InputError(f"{path}: {duplicates} serial(s) appear more than once")
    counts = await conn.fetchrow(q["import_stage_merge"], issuer_id)
    return counts["inserted"], counts["updated"]

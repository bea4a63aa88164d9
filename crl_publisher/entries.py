"""The entries of a CRL: streamed from their stored DER, or rebuilt row by row when that fails.

Fast path. A full CRL is the scope's stored `crl_entry` values laid end to end (COPY, decoded in
C per chunk), a delta the entries of its changed rows. Nothing is parsed per row: the assembled
CRL is checked as a whole (crl_publisher/checks.py), which catches a corrupt entry (the CRL no
longer parses, or lists another number of entries than the rows sent).

Rebuild. When that check fails on the entries, the publisher reads the same rows again with the
columns an entry is encoded from and takes, per row, the first that works:

1. the entry encoded from the row's columns (serial, revocation date, reason, invalidity date),
   which are what OCSP answers from: stored entry bytes that are bad, missing or merely stale
   never take a revoked certificate off the CRL;
2. the stored entry, when the columns cannot be encoded but the stored bytes are a well-formed
   entry for this serial;
3. nothing: the row is reported as skipped, quarantined by the caller (revoc/quarantine.py, kind
   'publish', logged once) and the CRL is published with every other row. The entry-count check
   counts only the rows included.

Stored entries re-encoded in case 1 are written back by the caller (only if the row has not
changed since), so the next CRL takes the fast path again and the problem is logged once.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from crl_publisher.builder import CrlAssembler
from revoc.crl_paths import UNSHARDED
from revoc.der.asn1 import DerError, expect, read_tlv
from revoc.der.crl import encode_crl_entry
from revoc.model import Reason
from revoc.queries import queries

_TIME_TAGS = {0x17: 13, 0x18: 15}  # UTCTime YYMMDDHHMMSSZ, GeneralizedTime YYYYMMDDHHMMSSZ
_CURSOR_PREFETCH = 5000


class EntriesError(Exception):
    """The entries arrived broken on the way (not a row's fault): the round fails."""


@dataclass(frozen=True, slots=True)
class SkippedRow:
    """A row no entry could be made for."""

    serial: bytes
    change_seq: int
    error: str


@dataclass(frozen=True, slots=True)
class ReencodedRow:
    """A row whose stored entry was bad or stale, with the entry its columns encode to."""

    serial: bytes
    change_seq: int
    entry: bytes


@dataclass(slots=True)
class RebuildReport:
    """What a row-by-row rebuild did."""

    included: int = 0
    reencoded: list[ReencodedRow] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)


# ---------------------------------------------------------------- fast path


class _HexEntrySink:
    """COPY output sink: lines of hex-encoded entries -> assembler, decoded in C per chunk.

    COPY ... TO STDOUT in text format sends one line per row; `encode(crl_entry, 'hex')` makes
    every line plain hex, so a chunk up to its last newline is decoded with one unhexlify call
    instead of a Python loop over rows (a million rows stream in well under a second).
    """

    __slots__ = ("assembler", "rest", "rows")

    def __init__(self, assembler: CrlAssembler) -> None:
        self.assembler = assembler
        self.rest = b""
        self.rows = 0

    async def __call__(self, chunk: bytes) -> None:
        data = self.rest + chunk if self.rest else chunk
        cut = data.rfind(b"\n") + 1
        if cut:
            lines = data[:cut]
            self.rows += lines.count(b"\n")
            self.assembler.add(binascii.unhexlify(lines.replace(b"\n", b"")))
        self.rest = data[cut:]


async def stream_full_entries(conn: asyncpg.Connection, issuer_id: int, shard: int,
                              cutoff: datetime, assembler: CrlAssembler, name: str) -> int:
    """Stream the stored full-CRL entries of a scope into `assembler`; returns the row count.

    Read from certificates_revoked alone (0011: an index-only range scan in serial order) for a
    shard, and for the issuer-wide scope of an issuer none of whose revoked certificates has a
    shard (the usual unsharded issuer); the issuer-wide scope of an issuer with both goes by
    the primary key, every revoked row of the issuer in serial order. Which of the two is asked
    and answered in the caller's transaction: the round's REPEATABLE READ snapshot, so a
    sharded row revoked in between cannot fall between the question and the read.

    The count is the server's (the COPY command tag), checked against the lines decoded here,
    so a row lost or split on the way cannot go unnoticed; it costs no second scan.
    """
    q = queries()
    sink = _HexEntrySink(assembler)
    # COPY (query) takes the query without its terminating semicolon.
    if shard == UNSHARDED:
        # The same rows either way, within the caller's snapshot (see the docstring).
        sharded = await conn.fetchval(q["crl_revoked_with_shard"], issuer_id)
        query = (q["crl_full_entries_issuer"] if sharded
                 else q["crl_full_entries_unsharded"]).rstrip().rstrip(";")
        status = await conn.copy_from_query(query, issuer_id, cutoff, output=sink)
    else:
        query = q["crl_full_entries_shard"].rstrip().rstrip(";")
        status = await conn.copy_from_query(query, issuer_id, cutoff, shard, output=sink)
    server_rows = int(str(status).rsplit(" ", 1)[-1])
    if sink.rest or sink.rows != server_rows:
        raise EntriesError(f"{name}: the database sent {server_rows} entries, {sink.rows} "
                           "arrived whole")
    return server_rows


class _ShardedHexSink:
    """COPY output sink for several shards in one pass: lines `SSSSSSSS` + hex entry, where
    SSSSSSSS is the shard in 8 hex digits, in serial order with the shards interleaved.

    Per chunk the lines are put in one bucket per shard (the only per-row Python step, a list
    append); each bucket is then joined, its constant prefixes cut out with one replace, and
    decoded with one unhexlify, so every shard's entries stay in serial order.
    """

    __slots__ = ("assemblers", "rest", "rows")

    def __init__(self, assemblers: dict[int, CrlAssembler]) -> None:
        self.assemblers = {f"{shard:08x}".encode(): a for shard, a in assemblers.items()}
        self.rest = b""
        self.rows = dict.fromkeys(self.assemblers, 0)

    async def __call__(self, chunk: bytes) -> None:
        data = self.rest + chunk if self.rest else bytes(chunk)  # keys must be hashable
        cut = data.rfind(b"\n")
        if cut < 0:
            self.rest = data
            return
        self.rest = data[cut + 1:]
        buckets: dict[bytes, list[bytes]] = {}
        for line in data[:cut].split(b"\n"):
            key = line[:8]
            bucket = buckets.get(key)
            if bucket is None:
                bucket = buckets[key] = []
            bucket.append(line)
        for key, lines in buckets.items():
            assembler = self.assemblers.get(key)
            if assembler is None:
                raise EntriesError(f"the database sent an entry of shard {key!r}, not asked for")
            self.rows[key] += len(lines)
            joined = b"\n".join(lines)
            assembler.add(binascii.unhexlify(joined[8:].replace(b"\n" + key, b"")))


async def stream_shard_entries(conn: asyncpg.Connection, issuer_id: int,
                               scopes: dict[int, tuple[datetime, CrlAssembler]],
                               name: str) -> dict[int, int]:
    """The stored full-CRL entries of several shards of one issuer, each with its own cutoff, in
    one pass over the issuer's rows; returns the row count per shard.

    One query per shard reads the whole heap once per shard when it must visit the heap (the
    shards' certificates are interleaved in the table: a shard is a function of the serial), so
    16 shards cost 16 passes; this reads the issuer's rows once, in serial order, and splits
    them by shard (_ShardedHexSink). The publisher uses it only while many rows are not
    all-visible (crl_publisher/issuer_round.py ONE_PASS_SHARDS): otherwise one query per shard
    reads certificates_revoked alone (migration 0011) and costs no split.

    The total count is the server's (COPY command tag), checked against the lines that
    arrived.
    """
    shards = sorted(scopes)
    sink = _ShardedHexSink({shard: scopes[shard][1] for shard in shards})
    query = queries()["crl_full_entries_shards"].rstrip().rstrip(";")
    status = await conn.copy_from_query(query, issuer_id, shards,
                                        [scopes[shard][0] for shard in shards], output=sink)
    server_rows = int(str(status).rsplit(" ", 1)[-1])
    arrived = sum(sink.rows.values())
    if sink.rest or arrived != server_rows:
        raise EntriesError(f"{name}: the database sent {server_rows} entries, {arrived} "
                           "arrived whole")
    return {shard: sink.rows[f"{shard:08x}".encode()] for shard in shards}


# ---------------------------------------------------------------- row by row


def entry_is_well_formed(entry: bytes, serial: bytes) -> bool:
    """A revokedCertificates entry for `serial`: SEQUENCE { INTEGER, Time, [extensions] }."""
    try:
        start, end = expect(entry, 0, len(entry), 0x30)
        if end != len(entry):
            return False
        serial_start, serial_end = expect(entry, start, end, 0x02)
        if entry[serial_start:serial_end] != serial:
            return False
        tag, time_start, time_end = read_tlv(entry, serial_end, end)
        if _TIME_TAGS.get(tag) != time_end - time_start:
            return False
        if time_end < end:
            _, extensions_end = expect(entry, time_end, end, 0x30)
            return extensions_end == end
        return True
    except DerError:
        return False


def _serial_int(serial: bytes) -> int:
    return int.from_bytes(serial, "big", signed=True)


def entry_from_columns(row: asyncpg.Record | dict[str, Any]) -> bytes:
    """The entry of a revoked row, encoded from its columns; ValueError says why it cannot be."""
    serial = bytes(row["serial"])
    if not serial:
        raise ValueError("the serial is empty")
    revoked_at = row["revoked_at"]
    if revoked_at is None:
        raise ValueError(f"revocation date {row['revoked_at_text']} cannot be encoded")
    invalidity = row["invalidity_date"]
    if invalidity is None and row["invalidity_date_text"] is not None:
        raise ValueError(f"invalidity date {row['invalidity_date_text']} cannot be encoded")
    reason = Reason(row["reason"]) if row["reason"] is not None else None
    return encode_crl_entry(_serial_int(serial), revoked_at, reason, invalidity)


def remove_from_crl_entry(serial: bytes, base_this_update: datetime) -> bytes:
    """A released hold in a delta CRL (RFC 5280 §5.3.1): removeFromCRL, dated the base's
    thisUpdate (the release time is not recorded; that is the latest time the base listed it)."""
    if not serial:
        raise ValueError("the serial is empty")
    return encode_crl_entry(_serial_int(serial), base_this_update, Reason.removeFromCRL)


def _row_entry(row: asyncpg.Record, base_this_update: datetime | None,
               report: RebuildReport) -> bytes | None:
    serial = bytes(row["serial"])
    stored = row["crl_entry"]
    if base_this_update is not None and stored is None and row["status"] == "good":
        try:
            return remove_from_crl_entry(serial, base_this_update)
        except (ValueError, OverflowError) as exc:
            report.skipped.append(SkippedRow(serial, row["change_seq"],
                                             f"removeFromCRL entry: {exc}"))
            return None
    try:
        entry = entry_from_columns(row)
    except (ValueError, OverflowError) as exc:
        if stored is not None and entry_is_well_formed(bytes(stored), serial):
            return bytes(stored)
        why = f"{exc}, and the stored entry is " + ("missing" if stored is None else "malformed")
        report.skipped.append(SkippedRow(serial, row["change_seq"], why))
        return None
    if stored is None or bytes(stored) != entry:
        report.reencoded.append(ReencodedRow(serial, row["change_seq"], entry))
    return entry


def rebuild_entries(rows: Iterable[asyncpg.Record], assembler: CrlAssembler,
                    report: RebuildReport, *, base_this_update: datetime | None = None) -> None:
    """Add an entry for each row that yields one (see the module docstring).

    `base_this_update` is given for a delta: its good rows are released holds (removeFromCRL).
    """
    for row in rows:
        entry = _row_entry(row, base_this_update, report)
        if entry is not None:
            assembler.add(entry)
            report.included += 1


async def rebuild_full_entries(conn: asyncpg.Connection, issuer_id: int, shard: int,
                               cutoff: datetime, assembler: CrlAssembler) -> RebuildReport:
    """The full-CRL entries of a scope, row by row, through a cursor (the caller's transaction)."""
    q = queries()
    report = RebuildReport()
    if shard == UNSHARDED:
        cursor = conn.cursor(q["crl_full_rows_issuer"], issuer_id, cutoff,
                             prefetch=_CURSOR_PREFETCH)
    else:
        cursor = conn.cursor(q["crl_full_rows_shard"], issuer_id, cutoff, shard,
                             prefetch=_CURSOR_PREFETCH)
    batch: list[asyncpg.Record] = []
    async for row in cursor:
        batch.append(row)
        if len(batch) >= _CURSOR_PREFETCH:
            rebuild_entries(batch, assembler, report)
            batch = []
    rebuild_entries(batch, assembler, report)
    return report


def delta_entries(rows: Iterable[asyncpg.Record], base_this_update: datetime,
                  assembler: CrlAssembler) -> int:
    """Fast path of a delta: stored entries, removeFromCRL for released holds; the row count.

    A row without an entry adds nothing, so the CRL fails its entry count and is rebuilt.
    """
    count = 0
    for row in rows:
        entry = row["crl_entry"]
        if entry is None and row["status"] == "good":
            try:
                entry = remove_from_crl_entry(bytes(row["serial"]), base_this_update)
            except (ValueError, OverflowError):
                entry = None
        if entry is not None:
            assembler.add(entry)
        count += 1
    return count

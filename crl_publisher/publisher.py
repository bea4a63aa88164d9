"""One publishing round: lock, read, build, sign, check, store, write files.

Scopes (crl_publisher/scopes.py). The issuer-wide CRL (shard -1 in `crls`): `{issuer}.crl` and
`{issuer}-delta.crl`, no IDP, every revoked certificate of the issuer; and one scope per shard:
`{issuer}/{k}.crl` and `{issuer}/{k}-delta.crl`. An issuer has the issuer-wide scope when it is
unsharded or while certificates without a shard are not expired; it has shards 0..K-1 when
sharded, plus every shard value its certificates carry. An issuer without a CA key
is skipped (logged).

What is due. A full CRL when the scope has none, when `crl_full_interval` has passed since the
last one, when its nextUpdate is near, or when forced; it is re-signed on schedule even if nothing
changed (CRL-18). With deltas on (`crl_delta_interval` > 0) a delta when a full is published,
when `crl_delta_interval` has passed since the last delta, or, with `publish_changes`, when the
scope has status changes its latest CRL does not reflect (decided here, under the scope's lock,
from the database: never because a notification said so, so two publishers publish each change
once). With deltas off, such a scope gets a new full CRL instead, so a revocation is on some CRL
after any round that publishes changes (`revoc publish --once`, or continuously with
`crl_delta_on_change`).

Numbers. One cRLNumber sequence per scope shared by both kinds: the clock in nanoseconds, or the
scope's highest number + 1 if that is larger (a clock that stepped back), read under the scope's
advisory lock, so numbers never repeat or go back across restarts and concurrent publishers
(CRL-9). A delta published together with a full CRL is "issued at the same time" and, as RFC 5280
§5.2.3 requires, carries the full CRL's number: it lists the changes since the previous full CRL,
so previous full + this delta says what the new full CRL says (but for entries the new full CRL
dropped after expiry, see below), and clients that already hold the new full CRL ignore it (its
number is not above the full's). The very first delta of a scope (no previous full) is empty and
numbered full + 1.

Delta contents (DELTA-3). Rows whose `change_seq` is above the base's `max_change_seq`: revoked
rows with their pre-encoded entry (new revocations, reason changes), and released holds (status
good, `hold_released`) as removeFromCRL entries whose revocationDate is the base's thisUpdate:
the release time is not recorded, and the base's thisUpdate is the latest time the base still
listed the certificate, stable from one delta to the next.

Expiry (CRL-15, BR-14). A full CRL lists a revoked certificate while its notAfter is later than
the thisUpdate of the scope's previous full CRL. So a certificate that expires between two full
CRLs is still on the next full CRL (issued after its notAfter), and leaves the one after that. The
first full CRL of a scope lists every revoked certificate. Deltas do not drop expired entries.

Consistency. `change_seq` values come from a sequence, so a revocation may hold a number below
one already committed while its transaction is still open. The publisher waits (LOCK certificates
IN SHARE MODE inside a savepoint) until no transaction writing certificates is open, reads the
sequence (the horizon) and takes the round's snapshot before it lets writers go on: every change
up to the horizon is in the snapshot and none above it, so the next delta misses nothing and no
change is published twice.

Bad rows (crl_publisher/entries.py). A CRL is the stored entries laid end to end. When it fails
its check on the entries (does not parse, or another count), it is rebuilt row by row: entries
re-encoded from the rows' columns, a row that cannot be encoded at all quarantined (revoc/
quarantine.py, logged once) and skipped; the rest is published.

Safety. All scope locks are taken (sorted, so two publishers cannot deadlock) on one connection
whose transaction outlives the round; the round reads and writes `crls` in one REPEATABLE READ
transaction on a second connection. Every CRL is checked as a relying party would before it is
stored (crl_publisher/checks.py); an issuer with a failing scope stores nothing (other issuers
still publish) and the round reports the failure. Files are written after the commit, still under
the locks, temp file + fsync + rename + fsync of the directory; each round first repairs files
that differ from the latest stored CRLs (a publisher killed between commit and file write). Both
live in crl_publisher/output.py. A file that cannot be written (a full disk, a bad --out) is
reported, never a reason to withhold the CRL from the database and the responders.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from crl_publisher.builder import CrlKind
from crl_publisher.checks import PublishError, check_crl
from crl_publisher.issuer_round import BuiltCrl, IssuerRound, load_signer, stream_full_entries
from crl_publisher.output import mirror_latest, write_all_atomically
from crl_publisher.scopes import (
    Scope,
    issuer_scopes,
    scope_lock_key,
)
from revoc.admin import list_issuers
from revoc.clock import Clock, SystemClock, utc_seconds
from revoc.crl_paths import UNSHARDED
from revoc.model import Issuer
from revoc.notify import encode_crl_published
from revoc.quarantine import quarantine_row, release_rows
from revoc.queries import queries
from revoc.settings import Settings
from revoc.signing import Signer, SigningError

log = logging.getLogger("revoc.publish")

@dataclass(frozen=True, slots=True)
class Publication:
    """One stored CRL, as logged and as reported to callers."""

    issuer: str
    issuer_id: int
    shard: int
    kind: str
    number: int
    base_number: int | None
    entries: int
    size: int
    seconds: float
    this_update: datetime
    next_update: datetime
    name: str
    sha256: str
    idp_urls: tuple[str, ...] = ()

    @property
    def notify_payload(self) -> str:
        return encode_crl_published(self.issuer_id, self.shard, self.kind, self.number)


@dataclass(slots=True)
class RoundReport:
    """What a round did: publications, issuers that failed (with the reason), skipped issuers,
    and what the heartbeat reports: commit-to-CRL lags of the changes published (seconds, count),
    the age of the oldest change no CRL reflects, and rows skipped because they cannot be
    encoded."""

    publications: list[Publication] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    file_errors: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    files_repaired: list[str] = field(default_factory=list)
    next_due: datetime | None = None
    lags: list[tuple[float, int]] = field(default_factory=list)
    oldest_unreflected_seconds: float = 0.0
    rows_skipped: int = 0
    rows_reencoded: int = 0
    oversize: list[str] = field(default_factory=list)  # CRLs over crl_size_limit

    @property
    def ok(self) -> bool:
        return not self.failures and not self.file_errors


# ---------------------------------------------------------------- the round


@dataclass(slots=True)
class _Plan:
    issuer: Issuer
    scopes: list[Scope]
    signer: Signer | None


async def publish_round(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    clock: Clock | None = None,
    force_full: bool = False,
    publish_changes: bool = True,
    full_on_change_delay: int | None = None,
) -> RoundReport:
    """Publish every due CRL of every issuer with a CA key; see the module docstring.

    `force_full` re-signs every full CRL now; `publish_changes` publishes a delta (a full CRL
    when deltas are off) for every scope with changes its latest CRL does not reflect, instead
    of waiting for the interval. Never raises for one issuer's failure: it is in
    `RoundReport.failures` and that issuer publishes nothing this round.
    """
    clock = clock or SystemClock()
    if full_on_change_delay is None:
        full_on_change_delay = settings.crl_full_on_change_delay
    report = RoundReport()
    q = queries()
    async with pool.acquire() as lock_conn, pool.acquire() as conn, lock_conn.transaction():
        scopes_now = utc_seconds(clock.now())
        plans: list[_Plan] = []
        for issuer in await list_issuers(lock_conn):
            if issuer.key_path is None:
                report.skipped[issuer.name] = "no CA key registered, so no CRLs are signed here"
                log.info("issuer %s has no CA key: skipping its CRLs", issuer.name)
                continue
            signer: Signer | None = None
            try:
                signer = load_signer(issuer, rsa_pss=settings.rsa_pss)
            except Exception as exc:  # whatever is wrong with one key is that issuer's alone
                reason = (str(exc) if isinstance(exc, PublishError)
                          else f"{type(exc).__name__}: {exc}")
                report.failures[issuer.name] = reason
                log.error("issuer %s: %s", issuer.name, reason)
            plans.append(_Plan(issuer, await issuer_scopes(lock_conn, issuer, scopes_now),
                               signer))
        for key in sorted({s.lock_key for p in plans if p.signer for s in p.scopes}):
            await lock_conn.execute(q["crl_scope_lock"], key)
        try:
            report.files_repaired = await mirror_latest(lock_conn, settings.crl_out)
        except OSError as exc:  # the database still gets the CRLs, and responders serve them
            report.file_errors.append(f"{settings.crl_out}: {exc}")
            log.error("CRL files under %s not repaired: %s", settings.crl_out, exc)
        snapshot = conn.transaction(isolation="repeatable_read")
        try:
            horizon = await _take_snapshot(lock_conn, conn, snapshot)
            # The CRLs are stored TOAST-compressed with lz4 where the server has it: at 1M
            # entries about as small as pglz (the default) and several times faster to write.
            await conn.execute(q["crl_store_lz4"])
            exact_now = clock.now()  # after the locks: never before a CRL stored meanwhile
            now = utc_seconds(exact_now)
            built_all, oldest, lagging = await _build_all(
                conn, settings, plans, report, now=now, exact_now=exact_now, horizon=horizon,
                force_full=force_full, publish_changes=publish_changes,
                full_on_change_delay=full_on_change_delay)
        except BaseException:
            with contextlib.suppress(Exception):
                await snapshot.rollback()
            raise
        await snapshot.commit()
        # Committed. Files and notifications follow, still under the scope locks, so a
        # concurrent publisher cannot write an older file after a newer one.
        published_at: datetime = await conn.fetchval(q["crl_database_clock"])
        unwritten = await write_all_atomically(
            settings.crl_out,
            [(item.scope.relative_name(item.params.kind), item.der) for item in built_all])
        for item in built_all:
            name = item.scope.relative_name(item.params.kind)
            if name in unwritten:  # stored and announced anyway; the next round repairs files
                report.file_errors.append(f"{name}: {unwritten[name]}")
                log.error("CRL file %s not written: %s", name, unwritten[name])
            publication = _publication(item)
            report.publications.append(publication)
            await conn.execute(q["crl_notify_published"], publication.notify_payload)
            log.info("published %s CRL %s (issuer %s, shard %s) number %d: %d entries, "
                     "%d bytes, %.3f s", publication.kind, name, publication.issuer,
                     publication.shard, publication.number, publication.entries,
                     publication.size, publication.seconds)
            if publication.size > settings.crl_size_limit:  # issue 13 point 5, ROOT-2
                report.oversize.append(name)
                log.warning("CRL %s is %d bytes, over REVOC_CRL_SIZE_LIMIT (%d): some relying "
                            "parties refuse it; give issuer %s more shards (`revoc crl plan`)",
                            name, publication.size, settings.crl_size_limit,
                            publication.issuer)
        report.lags = [(max(0.0, (published_at - at).total_seconds()), n) for at, n in lagging]
        if oldest is not None:
            report.oldest_unreflected_seconds = max(0.0, (published_at - oldest).total_seconds())
        await _record_row_outcomes(lock_conn, plans, built_all, report)
    return report


async def _take_snapshot(lock_conn: asyncpg.Connection, conn: asyncpg.Connection,
                         snapshot: asyncpg.transaction.Transaction) -> int:
    """Start the round's transaction on `conn` while writers of certificates are held back;
    return the horizon: the highest change_seq it sees, and it sees every one up to it."""
    q = queries()
    savepoint = lock_conn.transaction()
    await savepoint.start()
    try:
        await lock_conn.execute(q["crl_block_certificate_writers"])
        horizon: int = await lock_conn.fetchval(q["crl_change_horizon"])
        await snapshot.start()
        await conn.fetchval(q["crl_take_snapshot"])
    finally:
        await savepoint.rollback()  # releases the table lock at once, keeps the advisory locks
    return horizon


async def _build_all(conn: asyncpg.Connection, settings: Settings, plans: Sequence[_Plan],
                     report: RoundReport, *, now: datetime, exact_now: datetime, horizon: int,
                     force_full: bool, publish_changes: bool, full_on_change_delay: int
                     ) -> tuple[list[BuiltCrl], datetime | None, list[tuple[datetime, int]]]:
    """Build and store every issuer's due CRLs in the round's transaction; return them, the
    oldest change no CRL reflects afterwards, and the changes reflected for the first time."""
    built_all: list[BuiltCrl] = []
    oldest: datetime | None = None
    lagging: list[tuple[datetime, int]] = []
    for plan in plans:
        issuer = plan.issuer
        work = IssuerRound(conn, settings, issuer, plan.scopes, now=now, exact_now=exact_now,
                            horizon=horizon, force_full=force_full,
                            publish_changes=publish_changes,
                            full_on_change_delay=full_on_change_delay)
        built: list[BuiltCrl] = []
        try:
            async with conn.transaction():  # a savepoint: one issuer's failure is its own
                await work.load()
                if plan.signer is not None:
                    built = await work.build(plan.signer)
                    for item in built:
                        await _store(conn, settings, item)
        except Exception as exc:
            if conn.is_closed():
                raise
            built = []
            reason = (str(exc) if isinstance(exc, PublishError | SigningError)
                      else f"{type(exc).__name__}: {exc}")
            report.failures.setdefault(issuer.name, reason)
            log.error("issuer %s: CRLs not published: %s", issuer.name, reason)
        else:
            if plan.signer is not None and work.next_due is not None and (
                    report.next_due is None or work.next_due < report.next_due):
                report.next_due = work.next_due
        built_all += built
        lagging += work.newly_reflected(built)
        issuer_oldest = work.changes.oldest_unreflected(work.reflected_after(built))
        if issuer_oldest is not None and (oldest is None or issuer_oldest < oldest):
            oldest = issuer_oldest
    return built_all, oldest, lagging


async def _record_row_outcomes(lock_conn: asyncpg.Connection, plans: Sequence[_Plan],
                               built_all: Sequence[BuiltCrl], report: RoundReport) -> None:
    """Quarantine the rows skipped, release quarantined rows a full CRL took this round, and
    write back the entries re-encoded from their rows' columns."""
    q = queries()
    by_issuer: dict[int, list[BuiltCrl]] = {}
    for item in built_all:
        by_issuer.setdefault(item.scope.issuer.id, []).append(item)
    for plan in plans:
        items = by_issuer.get(plan.issuer.id)
        if not items:
            continue
        issuer = plan.issuer
        skipped = {row.serial: row for item in items for row in item.skipped}
        report.rows_skipped += len(skipped)
        reencoded = {row.serial: row for item in items for row in item.reencoded}
        report.rows_reencoded += len(reencoded)
        full_shards = {item.scope.shard for item in items if item.params.kind is CrlKind.FULL}
        try:
            async with lock_conn.transaction():
                for row in skipped.values():
                    await quarantine_row(lock_conn, "publish", issuer.id, issuer.name,
                                         row.serial, row.change_seq, row.error)
                held = await lock_conn.fetch(q["crl_quarantined"], issuer.id)
                release = [bytes(r["serial"]) for r in held
                           if bytes(r["serial"]) not in skipped
                           and (UNSHARDED in full_shards or r["shard"] in full_shards)]
                await release_rows(lock_conn, "publish", issuer.id, release)
        except asyncpg.PostgresError as exc:
            log.error("issuer %s: quarantine not recorded: %s", issuer.name, exc)
        if not reencoded:
            continue
        try:
            async with lock_conn.transaction():
                await lock_conn.executemany(q["crl_repair_entry"], [
                    (issuer.id, row.serial, row.entry, row.change_seq)
                    for row in reencoded.values()])
        except asyncpg.PostgresError as exc:  # e.g. a row the schema's checks now refuse
            log.warning("issuer %s: re-encoded CRL entries not written back: %s", issuer.name,
                        exc)


# CRLs from this size on are uploaded by COPY in chunks of UPLOAD_CHUNK (sql/queries/crl.sql
# crl_upload_prepare says why); smaller ones are bound as a parameter of one INSERT.
UPLOAD_FROM_BYTES = 4 * 1024 * 1024
UPLOAD_CHUNK = 1024 * 1024
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no header extension


async def _binary_copy_row(data: bytes) -> AsyncIterator[bytes]:
    """COPY BINARY of one row with one bytea column, in chunks (PostgreSQL docs, "Binary
    Format"): header, field count 1, the length, the bytes, the trailer -1."""
    yield _COPY_HEADER + struct.pack("!hi", 1, len(data))
    for start in range(0, len(data), UPLOAD_CHUNK):
        yield data[start:start + UPLOAD_CHUNK]
    yield b"\xff\xff"


async def _store(conn: asyncpg.Connection, settings: Settings, item: BuiltCrl) -> None:
    q = queries()
    params = item.params
    head = (item.scope.issuer.id, item.scope.shard, params.kind.value, params.number,
            params.base_number, params.this_update, params.next_update, item.max_change_seq,
            item.entries)
    tail = (item.sha256, item.scope.url(settings, params.kind), list(params.idp_urls) or None)
    if len(item.der) < UPLOAD_FROM_BYTES:
        await conn.execute(q["crl_insert"], *head, item.der, *tail)
        return
    await conn.execute(q["crl_upload_prepare"])
    await conn.copy_to_table("crl_upload", source=_binary_copy_row(item.der), columns=["der"],
                             format="binary")
    status = await conn.execute(q["crl_insert_uploaded"], *head, *tail)
    if status != "INSERT 0 1":  # the bytes that arrived are not the CRL that was checked
        raise PublishError(f"storing {item.scope.relative_name(params.kind)}: {status}, the "
                           "uploaded CRL differs from the one built")
    await conn.execute(q["crl_upload_clear"])


def _publication(item: BuiltCrl) -> Publication:
    params = item.params
    return Publication(
        issuer=item.scope.issuer.name, issuer_id=item.scope.issuer.id, shard=item.scope.shard,
        kind=params.kind.value, number=params.number, base_number=params.base_number,
        entries=item.entries, size=len(item.der), seconds=round(item.seconds, 6),
        this_update=params.this_update, next_update=params.next_update,
        name=item.scope.relative_name(params.kind),
        sha256=item.sha256.hex(), idp_urls=params.idp_urls)


def describe_failures(report: RoundReport) -> Sequence[str]:
    """One line per failed issuer and per file not written, for stderr."""
    return ([f"issuer {name}: {reason}" for name, reason in sorted(report.failures.items())]
            + [f"CRL file not written: {error}" for error in report.file_errors])


__all__ = [
    "Publication",
    "PublishError",
    "RoundReport",
    "Scope",
    "check_crl",
    "publish_round",
    "scope_lock_key",
    "stream_full_entries",
]

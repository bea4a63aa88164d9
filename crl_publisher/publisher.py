"""One publishing round: lock, read, build, sign, check, store, write files.

Scopes. An issuer without shards has one scope (shard -1 in `crls`): `{issuer}.crl` and
`{issuer}-delta.crl`. An issuer with K shards has K scopes and no issuer-wide CRL:
`{issuer}/{k}.crl` and `{issuer}/{k}-delta.crl`. An issuer without a CA key is skipped (logged).

What is due. A full CRL when the scope has none, when `crl_full_interval` has passed since the
last one, when its nextUpdate is near, or when forced; it is re-signed on schedule even if nothing
changed (CRL-18). With deltas on (`crl_delta_interval` > 0) a delta when a full is published,
when `crl_delta_interval` has passed since the last delta, or when brought forward (NOTIFY
cert_changed with `crl_delta_on_change`).

Numbers. One cRLNumber sequence per scope shared by both kinds: the clock in nanoseconds, or the
scope's highest number + 1 if that is larger (a clock that stepped back), read under the scope's
advisory lock, so numbers never repeat or go back across restarts and concurrent publishers
(CRL-9). A delta published together with a full CRL is "issued at the same time" and, as RFC 5280
§5.2.3 requires, carries the full CRL's number: it lists the changes since the previous full CRL,
so previous full + this delta says what the new full CRL says (but for entries the new full CRL
dropped after expiry, see below), and clients that already hold the new full CRL ignore it (its
number is not above the full's). The very first delta of a
scope (no previous full) is empty and numbered full + 1.

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
one already committed while its transaction is still open. Before the round's snapshot the
publisher waits (LOCK certificates IN SHARE MODE inside a savepoint, released at once) until no
transaction writing certificates is open and reads the sequence: every change up to that horizon
is in the snapshot, and later ones are above it, so the next delta cannot miss a revocation.

Safety. All scope locks are taken (sorted, so two publishers cannot deadlock) on one connection
whose transaction outlives the round; the round reads and writes `crls` in one REPEATABLE READ
transaction on a second connection, started after the locks are held. Every CRL is checked as a
relying party would before it is stored (re-parsed, signature verified with the CA certificate's
key, number above the scope's last, entry count equal to the database's count); an issuer with
a failing scope stores nothing (other issuers still publish) and the round reports the failure.
Files are written after the commit, still under the locks, temp file + fsync + rename + fsync of
the directory; each round first repairs files that differ from the latest stored CRLs (a publisher
killed between commit and file write). Both live in crl_publisher/output.py.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from crl_publisher.builder import CrlAssembler, CrlKind, CrlParams
from crl_publisher.output import mirror_latest, write_atomically
from revoc.admin import list_issuers, shard_url
from revoc.clock import Clock, SystemClock, utc_seconds
from revoc.crl_paths import UNSHARDED, crl_name, crl_url
from revoc.der.crl import encode_crl_entry
from revoc.model import Issuer, Reason
from revoc.queries import queries
from revoc.settings import Settings
from revoc.signing import FileKeySigner, Signer, SigningError, public_key_matches

log = logging.getLogger("revoc.publish")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NEVER = datetime(1, 1, 1, tzinfo=UTC)  # asyncpg sends it as a timestamp before any notAfter
# Advisory lock keys of this module: 0x43524C ("CRL") in the top bits, then issuer and shard.
_LOCK_NAMESPACE = 0x43524C << 40


class PublishError(Exception):
    """A CRL failed its checks or could not be built; the message says why."""


@dataclass(frozen=True, slots=True)
class Scope:
    """One sequence of CRLs: an unsharded issuer (shard -1) or one shard of a sharded issuer."""

    issuer: Issuer
    shard: int

    def relative_name(self, kind: CrlKind) -> str:
        """The file name under --out and the path under /crl/ (INTERFACE.md)."""
        return crl_name(self.issuer.name, self.shard, kind.value)

    def url(self, settings: Settings, kind: CrlKind) -> str:
        return crl_url(settings.public_url, self.issuer.name, self.shard, kind.value)

    @property
    def lock_key(self) -> int:
        return scope_lock_key(self.issuer.id, self.shard)


def scope_lock_key(issuer_id: int, shard: int) -> int:
    """A bigint advisory lock key of its own per (issuer, shard)."""
    return _LOCK_NAMESPACE | (issuer_id << 16) | (shard + 1)


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

    @property
    def notify_payload(self) -> str:
        return f"{self.issuer_id}:{self.shard}:{self.kind}:{self.number}"


@dataclass(slots=True)
class RoundReport:
    """What a round did: publications, issuers that failed (with the reason), skipped issuers."""

    publications: list[Publication] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    files_repaired: list[str] = field(default_factory=list)
    next_due: datetime | None = None

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True, slots=True)
class _Previous:
    number: int
    this_update: datetime
    next_update: datetime
    max_change_seq: int
    idp_urls: tuple[str, ...]
    base_number: int | None


@dataclass(slots=True)
class _Built:
    scope: Scope
    params: CrlParams
    der: bytes
    entries: int
    seconds: float
    max_change_seq: int


# ---------------------------------------------------------------- entry streaming


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


async def stream_full_entries(
    conn: asyncpg.Connection, scope: Scope, cutoff: datetime, assembler: CrlAssembler
) -> int:
    """Stream the full CRL entries of `scope` into `assembler`; returns the number of rows.

    The count is the server's (the COPY command tag), checked against the lines decoded here,
    so a row lost or split on the way cannot go unnoticed; it costs no second scan.
    """
    q = queries()
    sink = _HexEntrySink(assembler)
    # COPY (query) takes the query without its terminating semicolon.
    if scope.shard == UNSHARDED:
        query = q["crl_full_entries_issuer"].rstrip().rstrip(";")
        status = await conn.copy_from_query(query, scope.issuer.id, cutoff, output=sink)
    else:
        query = q["crl_full_entries_shard"].rstrip().rstrip(";")
        status = await conn.copy_from_query(query, scope.issuer.id, cutoff, scope.shard,
                                            output=sink)
    server_rows = int(str(status).rsplit(" ", 1)[-1])
    if sink.rest or sink.rows != server_rows:
        raise PublishError(f"{scope.relative_name(CrlKind.FULL)}: the database sent "
                           f"{server_rows} entries, {sink.rows} arrived whole")
    return server_rows


# ---------------------------------------------------------------- checks


def check_crl(
    der: bytes,
    *,
    ca_public_key: CertificateIssuerPublicKeyTypes,
    subject_der: bytes,
    number: int,
    above: int | None,
    entries: int,
    base_number: int | None,
) -> None:
    """Check a CRL as a relying party would; raise PublishError with the first problem."""
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError as exc:
        raise PublishError(f"the CRL does not parse: {exc}") from None
    if not crl.is_signature_valid(ca_public_key):
        raise PublishError("the CRL's signature does not verify with the CA certificate's key")
    if crl.issuer.public_bytes() != subject_der:
        raise PublishError("the CRL's issuer differs from the CA certificate's subject")
    try:
        got = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        raise PublishError("the CRL has no cRLNumber") from None
    if got != number:
        raise PublishError(f"the CRL's number is {got}, expected {number}")
    if above is not None and number <= above:
        raise PublishError(f"CRL number {number} is not above the last published ({above})")
    if len(crl) != entries:
        raise PublishError(f"the CRL lists {len(crl)} entries, the database holds {entries}")
    try:
        base = crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number
    except x509.ExtensionNotFound:
        base = None
    if base != base_number:
        raise PublishError(f"the CRL's BaseCRLNumber is {base}, expected {base_number}")
    if crl.next_update_utc is None or crl.next_update_utc <= crl.last_update_utc:
        raise PublishError("the CRL's nextUpdate is missing or not after thisUpdate")


# ---------------------------------------------------------------- the round


def _clock_number(now: datetime) -> int:
    """Nanoseconds since the epoch: 8 octets, far below the 20-octet limit until year 2262+."""
    return (now - _EPOCH) // timedelta(microseconds=1) * 1000


def _previous(row: asyncpg.Record | None) -> _Previous | None:
    if row is None:
        return None
    return _Previous(
        number=int(row["number"]), this_update=row["this_update"],
        next_update=row["next_update"], max_change_seq=row["max_change_seq"],
        idp_urls=tuple(row["idp_urls"] or ()),
        base_number=int(row["base_number"]) if row["base_number"] is not None else None)


def _due(previous: _Previous | None, interval: int, now: datetime) -> bool:
    """Due when missing, when `interval` has passed, or when nextUpdate is near (CRL-18)."""
    if previous is None:
        return True
    validity = previous.next_update - previous.this_update
    margin = min(timedelta(hours=1), validity / 4)
    return (now >= previous.this_update + timedelta(seconds=interval)
            or now >= previous.next_update - margin)


def _next_due(previous: _Previous, interval: int) -> datetime:
    validity = previous.next_update - previous.this_update
    margin = min(timedelta(hours=1), validity / 4)
    return min(previous.this_update + timedelta(seconds=interval), previous.next_update - margin)


class _IssuerRound:
    """Builds and checks every due CRL of one issuer inside the round's snapshot."""

    def __init__(self, conn: asyncpg.Connection, settings: Settings, issuer: Issuer,
                 signer: Signer, *, now: datetime, exact_now: datetime, horizon: int,
                 force_full: bool, force_delta: bool) -> None:
        self.conn = conn
        self.settings = settings
        self.issuer = issuer
        self.signer = signer
        self.now = now
        self.exact_now = exact_now
        self.horizon = horizon
        self.force_full = force_full
        self.force_delta = force_delta
        self.ca_key: CertificateIssuerPublicKeyTypes = x509.load_der_x509_certificate(
            issuer.cert_der).public_key()  # type: ignore[assignment]
        self.next_due: datetime | None = None

    def _note_due(self, moment: datetime) -> None:
        if self.next_due is None or moment < self.next_due:
            self.next_due = moment

    async def shard_urls(self) -> dict[int, tuple[str, ...]]:
        """IDP URLs per shard: the stored CDP URLs of its certificates (SHARD-1)."""
        q = queries()
        result: dict[int, tuple[str, ...]] = {}
        for row in await self.conn.fetch(q["crl_shard_urls"], self.issuer.id):
            urls = set(row["urls"])
            if row["some_without_url"] or not urls:
                urls.add(shard_url(self.settings.public_url, self.issuer.name, row["shard"]))
            result[row["shard"]] = tuple(sorted(urls))
        return result

    async def build(self) -> list[_Built]:
        q = queries()
        issuer = self.issuer
        if issuer.crl_shards:
            scopes = [Scope(issuer, k) for k in range(issuer.crl_shards)]
            unassigned = await self.conn.fetchval(q["crl_unassigned_count"], issuer.id)
            if unassigned:
                log.warning("issuer %s: %d revoked certificate(s) belong to no shard and are on "
                            "no CRL", issuer.name, unassigned)
        else:
            scopes = [Scope(issuer, UNSHARDED)]
        urls: dict[int, tuple[str, ...]] | None = None
        built: list[_Built] = []
        for scope in scopes:
            last_full = _previous(await self.conn.fetchrow(q["crl_latest"], issuer.id,
                                                           scope.shard, "full"))
            last_delta = _previous(await self.conn.fetchrow(q["crl_latest"], issuer.id,
                                                            scope.shard, "delta"))
            max_number_value = await self.conn.fetchval(q["crl_max_number"], issuer.id,
                                                        scope.shard)
            max_number = int(max_number_value) if max_number_value is not None else None
            full: _Built | None = None
            if self.force_full or _due(last_full, self.settings.crl_full_interval, self.now):
                if scope.shard != UNSHARDED and urls is None:
                    urls = await self.shard_urls()
                idp = () if scope.shard == UNSHARDED else (
                    (urls or {}).get(scope.shard)
                    or (shard_url(self.settings.public_url, issuer.name, scope.shard),))
                full = await self.build_full(scope, last_full, max_number, idp)
                built.append(full)
                self._note_due(self.now + timedelta(seconds=self.settings.crl_full_interval))
            else:
                assert last_full is not None
                self._note_due(_next_due(last_full, self.settings.crl_full_interval))
            if self.settings.crl_delta_interval <= 0:
                continue
            delta_due = (full is not None or self.force_delta or last_delta is None
                         or (last_full is not None and last_delta.number < last_full.number)
                         or _due(last_delta, self.settings.crl_delta_interval, self.now))
            if delta_due:
                built.append(await self.build_delta(scope, last_full, full, max_number))
                self._note_due(self.now + timedelta(seconds=self.settings.crl_delta_interval))
            else:
                assert last_delta is not None
                self._note_due(_next_due(last_delta, self.settings.crl_delta_interval))
        return built

    def _this_next(self, validity: int, previous: _Previous | None) -> tuple[datetime, datetime]:
        this_update = self.now
        next_update = this_update + timedelta(seconds=validity)
        # CRL-4: never a nextUpdate earlier than an earlier CRL's (e.g. after a settings change).
        if previous is not None and previous.next_update > next_update:
            next_update = previous.next_update
        return this_update, next_update

    async def build_full(self, scope: Scope, last_full: _Previous | None,
                         max_number: int | None, idp: tuple[str, ...]) -> _Built:
        started = time.perf_counter()
        number = _clock_number(self.exact_now)
        if max_number is not None and number <= max_number:
            number = max_number + 1
        this_update, next_update = self._this_next(self.settings.crl_full_validity, last_full)
        freshest = (scope.url(self.settings, CrlKind.DELTA)
                    if self.settings.crl_delta_interval > 0 else None)
        params = CrlParams(CrlKind.FULL, self.issuer.subject_der, self.issuer.key_id, number,
                           this_update, next_update, idp_urls=idp, freshest_url=freshest)
        cutoff = last_full.this_update if last_full is not None else _NEVER
        assembler = CrlAssembler(params, self.signer.algorithm_identifier)
        expected = await stream_full_entries(self.conn, scope, cutoff, assembler)
        der = assembler.sign(self.signer)
        check_crl(der, ca_public_key=self.ca_key, subject_der=self.issuer.subject_der,
                  number=number, above=max_number, entries=expected, base_number=None)
        return _Built(scope, params, der, expected, time.perf_counter() - started, self.horizon)

    async def build_delta(self, scope: Scope, last_full: _Previous | None, full: _Built | None,
                          max_number: int | None) -> _Built:
        started = time.perf_counter()
        q = queries()
        if full is not None and last_full is not None:
            # Issued with the full CRL: same number, base = the previous full (RFC 5280 §5.2.3).
            number, base_number = full.params.number, last_full.number
            since, base_this, idp = last_full.max_change_seq, last_full.this_update, \
                last_full.idp_urls
        elif full is not None:
            # The scope's first full CRL: an empty delta on top of it.
            number, base_number = full.params.number + 1, full.params.number
            since, base_this, idp = full.max_change_seq, full.params.this_update, \
                full.params.idp_urls
        else:
            if last_full is None:  # pragma: no cover - a full CRL is always due first
                raise PublishError("a delta CRL needs a full CRL of its scope")
            number = _clock_number(self.exact_now)
            if max_number is not None and number <= max_number:
                number = max_number + 1
            base_number = last_full.number
            since, base_this, idp = last_full.max_change_seq, last_full.this_update, \
                last_full.idp_urls
        last_delta = _previous(await self.conn.fetchrow(q["crl_latest"], self.issuer.id,
                                                        scope.shard, "delta"))
        this_update, next_update = self._this_next(self.settings.crl_delta_validity, last_delta)
        params = CrlParams(CrlKind.DELTA, self.issuer.subject_der, self.issuer.key_id, number,
                           this_update, next_update, base_number=base_number, idp_urls=idp)
        if scope.shard == UNSHARDED:
            rows = await self.conn.fetch(q["crl_delta_rows_issuer"], self.issuer.id, since)
        else:
            rows = await self.conn.fetch(q["crl_delta_rows_shard"], self.issuer.id, since,
                                         scope.shard)
        assembler = CrlAssembler(params, self.signer.algorithm_identifier)
        for row in rows:
            entry = row["crl_entry"]
            if entry is None:
                serial = int.from_bytes(row["serial"], "big", signed=True)
                entry = encode_crl_entry(serial, base_this, Reason.removeFromCRL)
            assembler.add(entry)
        der = assembler.sign(self.signer)
        check_crl(der, ca_public_key=self.ca_key, subject_der=self.issuer.subject_der,
                  number=number, above=max_number, entries=len(rows), base_number=base_number)
        return _Built(scope, params, der, len(rows), time.perf_counter() - started,
                      self.horizon)


def load_signer(issuer: Issuer) -> Signer:
    """The CA's CRL signing key, checked against the CA certificate."""
    assert issuer.key_path is not None
    try:
        signer = FileKeySigner.from_file(issuer.key_path)
    except SigningError as exc:
        raise PublishError(str(exc)) from None
    if not public_key_matches(signer, x509.load_der_x509_certificate(issuer.cert_der)):
        raise PublishError(f"{issuer.key_path} does not match the CA certificate's key")
    return signer


def _wants_delta(force_delta: bool | Collection[int], issuer_id: int) -> bool:
    if isinstance(force_delta, bool):
        return force_delta
    return issuer_id in force_delta


async def publish_round(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    clock: Clock | None = None,
    force_full: bool = False,
    force_delta: bool | Collection[int] = False,
) -> RoundReport:
    """Publish every due CRL of every issuer with a CA key; see the module docstring.

    `force_full` re-signs every full CRL now; `force_delta` (True, or a set of issuer ids)
    publishes deltas now instead of at their interval. Never raises for one issuer's failure:
    it is in `RoundReport.failures` and that issuer publishes nothing this round.
    """
    clock = clock or SystemClock()
    report = RoundReport()
    q = queries()
    async with pool.acquire() as lock_conn, pool.acquire() as conn, lock_conn.transaction():
        issuers = await list_issuers(lock_conn)
        signers: dict[int, Signer] = {}
        scopes: list[Scope] = []
        for issuer in issuers:
            if issuer.key_path is None:
                report.skipped[issuer.name] = "no CA key registered, so no CRLs are signed here"
                log.info("issuer %s has no CA key: skipping its CRLs", issuer.name)
                continue
            try:
                signers[issuer.id] = load_signer(issuer)
            except PublishError as exc:
                report.failures[issuer.name] = str(exc)
                log.error("issuer %s: %s", issuer.name, exc)
                continue
            shards = range(issuer.crl_shards) if issuer.crl_shards else [UNSHARDED]
            scopes += [Scope(issuer, shard) for shard in shards]
        for scope in sorted(scopes, key=lambda s: s.lock_key):
            await lock_conn.execute(q["crl_scope_lock"], scope.lock_key)
        report.files_repaired = await mirror_latest(lock_conn, settings.crl_out)
        horizon = await _change_horizon(lock_conn)
        exact_now = clock.now()
        now = utc_seconds(exact_now)
        built_all: list[_Built] = []
        async with conn.transaction(isolation="repeatable_read"):
            for issuer in issuers:
                signer = signers.get(issuer.id)
                if signer is None:
                    continue
                work = _IssuerRound(conn, settings, issuer, signer, now=now, exact_now=exact_now,
                                    horizon=horizon, force_full=force_full,
                                    force_delta=_wants_delta(force_delta, issuer.id))
                try:
                    async with conn.transaction():  # a savepoint: one issuer's failure is its own
                        built = await work.build()
                        for item in built:
                            await _store(conn, settings, item)
                except (PublishError, SigningError, ValueError, asyncpg.PostgresError) as exc:
                    report.failures[issuer.name] = str(exc)
                    log.error("issuer %s: CRLs not published: %s", issuer.name, exc)
                    continue
                built_all += built
                if work.next_due is not None and (report.next_due is None
                                                  or work.next_due < report.next_due):
                    report.next_due = work.next_due
        # Committed. Files and notifications follow, still under the scope locks, so a
        # concurrent publisher cannot write an older file after a newer one.
        for item in built_all:
            name = item.scope.relative_name(item.params.kind)
            await asyncio.to_thread(write_atomically, settings.crl_out, name, item.der)
            publication = _publication(item)
            report.publications.append(publication)
            await conn.execute(q["crl_notify_published"], publication.notify_payload)
            log.info("published %s CRL %s (issuer %s, shard %s) number %d: %d entries, "
                     "%d bytes, %.3f s", publication.kind, name, publication.issuer,
                     publication.shard, publication.number, publication.entries,
                     publication.size, publication.seconds)
    return report


async def _change_horizon(lock_conn: asyncpg.Connection) -> int:
    """The highest change_seq whose transaction has ended (see "Consistency" above)."""
    q = queries()
    savepoint = lock_conn.transaction()
    await savepoint.start()
    try:
        await lock_conn.execute(q["crl_block_certificate_writers"])
        horizon: int = await lock_conn.fetchval(q["crl_change_horizon"])
    finally:
        await savepoint.rollback()  # releases the table lock at once, keeps the advisory locks
    return horizon


async def _store(conn: asyncpg.Connection, settings: Settings, item: _Built) -> None:
    params = item.params
    await conn.execute(
        queries()["crl_insert"], item.scope.issuer.id, item.scope.shard, params.kind.value,
        params.number, params.base_number, params.this_update, params.next_update,
        item.max_change_seq, item.entries, item.der, hashlib.sha256(item.der).digest(),
        item.scope.url(settings, params.kind), list(params.idp_urls) or None)


def _publication(item: _Built) -> Publication:
    params = item.params
    return Publication(
        issuer=item.scope.issuer.name, issuer_id=item.scope.issuer.id, shard=item.scope.shard,
        kind=params.kind.value, number=params.number, base_number=params.base_number,
        entries=item.entries, size=len(item.der), seconds=round(item.seconds, 6),
        this_update=params.this_update, next_update=params.next_update,
        name=item.scope.relative_name(params.kind),
        sha256=hashlib.sha256(item.der).hexdigest())


def describe_failures(report: RoundReport) -> Sequence[str]:
    """One line per failed issuer, for stderr."""
    return [f"issuer {name}: {reason}" for name, reason in sorted(report.failures.items())]


__all__ = [
    "Publication",
    "PublishError",
    "RoundReport",
    "Scope",
    "check_crl",
    "publish_round",
    "scope_lock_key",
]

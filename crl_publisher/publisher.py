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
once). Full CRLs on change (issue 13 point 1): with `publish_changes`, a scope with a change its
latest full CRL does not list gets a new full CRL (and, with deltas, a delta of the same number)
once `full_on_change_delay` has passed since that full CRL: at once for `revoc publish --once`,
after `crl_full_on_change_delay` (default 1 minute) continuously, so a burst of changes shares
one full CRL and no change waits longer than the delay plus a round; `next_due` says when.
Issuers with the br profile publish no deltas unless `crl_br_deltas` (TLS BR §7.2.2).

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

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from crl_publisher.builder import CrlAssembler, CrlKind, CrlParams
from crl_publisher.checks import EntryCheckError, PublishError, check_crl
from crl_publisher.entries import (
    RebuildReport,
    ReencodedRow,
    SkippedRow,
    delta_entries,
    rebuild_entries,
    rebuild_full_entries,
)
from crl_publisher.entries import stream_full_entries as _stream_entries
from crl_publisher.output import mirror_latest, write_atomically
from crl_publisher.scopes import (
    IssuerChanges,
    Previous,
    Scope,
    ScopeState,
    issuer_scopes,
    scope_lock_key,
    scope_states,
)
from revoc.admin import list_issuers, shard_url
from revoc.clock import Clock, SystemClock, utc_seconds
from revoc.crl_paths import UNSHARDED
from revoc.model import Issuer, Profile
from revoc.notify import encode_crl_published
from revoc.quarantine import quarantine_row, release_rows
from revoc.queries import queries
from revoc.settings import Settings
from revoc.signing import FileKeySigner, Signer, SigningError, public_key_matches

log = logging.getLogger("revoc.publish")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NEVER = datetime(1, 1, 1, tzinfo=UTC)  # asyncpg sends it as a timestamp before any notAfter


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


@dataclass(slots=True)
class _Built:
    scope: Scope
    params: CrlParams
    der: bytes
    entries: int
    seconds: float
    max_change_seq: int
    skipped: list[SkippedRow] = field(default_factory=list)
    reencoded: list[ReencodedRow] = field(default_factory=list)


async def stream_full_entries(conn: asyncpg.Connection, scope: Scope, cutoff: datetime,
                              assembler: CrlAssembler) -> int:
    """The stored full-CRL entries of `scope` into `assembler` (crl_publisher/entries.py)."""
    return await _stream_entries(conn, scope.issuer.id, scope.shard, cutoff, assembler,
                                 scope.relative_name(CrlKind.FULL))


# ---------------------------------------------------------------- what is due


def _clock_number(now: datetime) -> int:
    """Nanoseconds since the epoch: 8 octets, far below the 20-octet limit until year 2262+."""
    return (now - _EPOCH) // timedelta(microseconds=1) * 1000


def _due(previous: Previous | None, interval: int, now: datetime) -> bool:
    """Due when missing, when `interval` has passed, or when nextUpdate is near (CRL-18)."""
    if previous is None:
        return True
    validity = previous.next_update - previous.this_update
    margin = min(timedelta(hours=1), validity / 4)
    return (now >= previous.this_update + timedelta(seconds=interval)
            or now >= previous.next_update - margin)


def _next_due(previous: Previous, interval: int) -> datetime:
    validity = previous.next_update - previous.this_update
    margin = min(timedelta(hours=1), validity / 4)
    return min(previous.this_update + timedelta(seconds=interval), previous.next_update - margin)


# ---------------------------------------------------------------- one issuer


class _IssuerRound:
    """Builds and checks every due CRL of one issuer inside the round's snapshot."""

    def __init__(self, conn: asyncpg.Connection, settings: Settings, issuer: Issuer,
                 scopes: Sequence[Scope], *, now: datetime, exact_now: datetime, horizon: int,
                 force_full: bool, publish_changes: bool, full_on_change_delay: int) -> None:
        self.conn = conn
        self.full_on_change_delay = timedelta(seconds=full_on_change_delay)
        self.deltas = publishes_deltas(settings, issuer)
        self.settings = settings
        self.issuer = issuer
        self.scopes = scopes
        self.now = now
        self.exact_now = exact_now
        self.horizon = horizon
        self.force_full = force_full
        self.publish_changes = publish_changes
        self.ca_key: CertificateIssuerPublicKeyTypes = x509.load_der_x509_certificate(
            issuer.cert_der).public_key()  # type: ignore[assignment]
        self.next_due: datetime | None = None
        self.states: list[ScopeState] = []
        self.changes = IssuerChanges([], [])

    def _note_due(self, moment: datetime) -> None:
        if self.next_due is None or moment < self.next_due:
            self.next_due = moment

    async def load(self) -> None:
        """Read what each scope's CRLs reflect and the issuer's changes above that."""
        self.states = await scope_states(self.conn, self.scopes)
        self.changes = await IssuerChanges.load(self.conn, self.issuer.id, self.states)

    async def shard_urls(self) -> dict[int, tuple[str, ...]]:
        """IDP URLs per shard: the stored CDP URLs of its certificates (SHARD-1)."""
        result: dict[int, tuple[str, ...]] = {}
        for row in await self.conn.fetch(queries()["crl_shard_urls"], self.issuer.id):
            urls = set(row["urls"])
            if row["some_without_url"] or not urls:
                urls.add(shard_url(self.settings.public_url, self.issuer.name, row["shard"]))
            result[row["shard"]] = tuple(sorted(urls))
        return result

    async def build(self, signer: Signer) -> list[_Built]:
        settings = self.settings
        deltas = self.deltas
        urls: dict[int, tuple[str, ...]] | None = None
        built: list[_Built] = []
        for state in self.states:
            scope, last_full, last_delta = state.scope, state.last_full, state.last_delta
            changed = (self.publish_changes and last_full is not None
                       and self.changes.has_changes(state))
            # Issue 13 point 1: a change not on the full CRL yet re-issues it once
            # `full_on_change_delay` has passed since the previous full CRL, so a burst of
            # changes shares one full CRL and none waits longer than the delay (plus a round).
            full_on_change = False
            if (self.publish_changes and last_full is not None
                    and self.changes.has_changes(state, above=last_full.max_change_seq)):
                due_at = last_full.this_update + self.full_on_change_delay
                full_on_change = self.now >= due_at
                if not full_on_change:
                    self._note_due(due_at)
            full: _Built | None = None
            if (self.force_full or _due(last_full, settings.crl_full_interval, self.now)
                    or full_on_change):
                if scope.shard != UNSHARDED and urls is None:
                    urls = await self.shard_urls()
                idp = () if scope.shard == UNSHARDED else (
                    (urls or {}).get(scope.shard)
                    or (shard_url(settings.public_url, self.issuer.name, scope.shard),))
                full = await self.build_full(signer, state, idp)
                built.append(full)
                self._note_due(self.now + timedelta(seconds=settings.crl_full_interval))
            else:
                assert last_full is not None
                self._note_due(_next_due(last_full, settings.crl_full_interval))
            if not deltas:
                continue
            if (full is not None or changed or last_delta is None
                    or (last_full is not None and last_delta.number < last_full.number)
                    or _due(last_delta, settings.crl_delta_interval, self.now)):
                built.append(await self.build_delta(signer, state, full))
                self._note_due(self.now + timedelta(seconds=settings.crl_delta_interval))
            else:
                self._note_due(_next_due(last_delta, settings.crl_delta_interval))
        return built

    def _this_next(self, validity: int, previous: Previous | None) -> tuple[datetime, datetime]:
        this_update = self.now
        next_update = this_update + timedelta(seconds=validity)
        # CRL-4: never a nextUpdate earlier than an earlier CRL's (e.g. after a settings change).
        if previous is not None and previous.next_update > next_update:
            next_update = previous.next_update
        return this_update, next_update

    def _check(self, der: bytes, params: CrlParams, above: int | None, entries: int) -> None:
        check_crl(der, ca_public_key=self.ca_key, subject_der=self.issuer.subject_der,
                  number=params.number, above=above, entries=entries,
                  base_number=params.base_number)

    def _log_rebuild(self, name: str, problem: EntryCheckError, report: RebuildReport) -> None:
        shown = ", ".join(r.serial.hex().upper() for r in report.reencoded[:5])
        more = "" if len(report.reencoded) <= 5 else f" and {len(report.reencoded) - 5} more"
        # A warning: the rows themselves are logged once each, as errors, by the quarantine.
        log.warning("issuer %s: %s: %s; rebuilt row by row: %d entries, %d re-encoded from "
                    "their columns%s (stored entries repaired), %d skipped (quarantined)",
                    self.issuer.name, name, problem, report.included, len(report.reencoded),
                    f" (serials {shown}{more})" if shown else "", len(report.skipped))

    async def build_full(self, signer: Signer, state: ScopeState,
                         idp: tuple[str, ...]) -> _Built:
        started = time.perf_counter()
        scope, last_full, max_number = state.scope, state.last_full, state.max_number
        number = _clock_number(self.exact_now)
        if max_number is not None and number <= max_number:
            number = max_number + 1
        this_update, next_update = self._this_next(self.settings.crl_full_validity, last_full)
        freshest = scope.url(self.settings, CrlKind.DELTA) if self.deltas else None
        params = CrlParams(CrlKind.FULL, self.issuer.subject_der, self.issuer.key_id, number,
                           this_update, next_update, idp_urls=idp, freshest_url=freshest)
        cutoff = last_full.this_update if last_full is not None else _NEVER
        assembler = CrlAssembler(params, signer.algorithm_identifier)
        expected = await stream_full_entries(self.conn, scope, cutoff, assembler)
        der = assembler.sign(signer)
        try:
            self._check(der, params, max_number, expected)
        except EntryCheckError as problem:
            assembler = CrlAssembler(params, signer.algorithm_identifier)
            report = await rebuild_full_entries(self.conn, self.issuer.id, scope.shard, cutoff,
                                                assembler)
            der = assembler.sign(signer)
            self._log_rebuild(scope.relative_name(CrlKind.FULL), problem, report)
            self._check(der, params, max_number, report.included)
            return _Built(scope, params, der, report.included, time.perf_counter() - started,
                          self.horizon, report.skipped, report.reencoded)
        return _Built(scope, params, der, expected, time.perf_counter() - started, self.horizon)

    async def build_delta(self, signer: Signer, state: ScopeState,
                          full: _Built | None) -> _Built:
        started = time.perf_counter()
        q = queries()
        scope, last_full, max_number = state.scope, state.last_full, state.max_number
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
        this_update, next_update = self._this_next(self.settings.crl_delta_validity,
                                                   state.last_delta)
        params = CrlParams(CrlKind.DELTA, self.issuer.subject_der, self.issuer.key_id, number,
                           this_update, next_update, base_number=base_number, idp_urls=idp)
        if scope.shard == UNSHARDED:
            rows = await self.conn.fetch(q["crl_delta_rows_issuer"], self.issuer.id, since)
        else:
            rows = await self.conn.fetch(q["crl_delta_rows_shard"], self.issuer.id, since,
                                         scope.shard)
        assembler = CrlAssembler(params, signer.algorithm_identifier)
        count = delta_entries(rows, base_this, assembler)
        der = assembler.sign(signer)
        try:
            self._check(der, params, max_number, count)
        except EntryCheckError as problem:
            assembler = CrlAssembler(params, signer.algorithm_identifier)
            report = RebuildReport()
            rebuild_entries(rows, assembler, report, base_this_update=base_this)
            der = assembler.sign(signer)
            self._log_rebuild(scope.relative_name(CrlKind.DELTA), problem, report)
            self._check(der, params, max_number, report.included)
            return _Built(scope, params, der, report.included, time.perf_counter() - started,
                          self.horizon, report.skipped, report.reencoded)
        return _Built(scope, params, der, count, time.perf_counter() - started, self.horizon)

    def reflected_after(self, built: Sequence[_Built]) -> dict[int, int | None]:
        """What each scope's CRLs reflect once `built` is stored."""
        published = {item.scope.shard for item in built}
        return {s.scope.shard: (self.horizon if s.scope.shard in published else s.reflected)
                for s in self.states}

    def newly_reflected(self, built: Sequence[_Built]) -> list[tuple[datetime, int]]:
        published = {item.scope.shard for item in built}
        result: list[tuple[datetime, int]] = []
        for state in self.states:
            if state.scope.shard in published:
                result += self.changes.newly_reflected(state, self.horizon)
        return result


def publishes_deltas(settings: Settings, issuer: Issuer) -> bool:
    """Deltas (and freshestCRL on the full CRLs) when `crl_delta_interval` is set, but not for
    issuers with the br profile unless `crl_br_deltas`: TLS BR §7.2.2 lists the CRL extensions
    a BR CRL carries and makes every other one NOT RECOMMENDED."""
    if settings.crl_delta_interval <= 0:
        return False
    return issuer.profile is not Profile.BR or settings.crl_br_deltas


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
    of waiting for the interval, and re-issues the full CRL of such a scope once
    `full_on_change_delay` (default: the `crl_full_on_change_delay` setting; `--once` passes 0)
    has passed since its previous full CRL. Never raises for one issuer's failure: it is in
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
                signer = load_signer(issuer)
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
        for item in built_all:
            name = item.scope.relative_name(item.params.kind)
            try:
                await asyncio.to_thread(write_atomically, settings.crl_out, name, item.der)
            except OSError as exc:  # stored and announced anyway; the next round repairs files
                report.file_errors.append(f"{name}: {exc}")
                log.error("CRL file %s not written: %s", name, exc)
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
                     ) -> tuple[list[_Built], datetime | None, list[tuple[datetime, int]]]:
    """Build and store every issuer's due CRLs in the round's transaction; return them, the
    oldest change no CRL reflects afterwards, and the changes reflected for the first time."""
    built_all: list[_Built] = []
    oldest: datetime | None = None
    lagging: list[tuple[datetime, int]] = []
    for plan in plans:
        issuer = plan.issuer
        work = _IssuerRound(conn, settings, issuer, plan.scopes, now=now, exact_now=exact_now,
                            horizon=horizon, force_full=force_full,
                            publish_changes=publish_changes,
                            full_on_change_delay=full_on_change_delay)
        built: list[_Built] = []
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
                               built_all: Sequence[_Built], report: RoundReport) -> None:
    """Quarantine the rows skipped, release quarantined rows a full CRL took this round, and
    write back the entries re-encoded from their rows' columns."""
    q = queries()
    by_issuer: dict[int, list[_Built]] = {}
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
        sha256=hashlib.sha256(item.der).hexdigest(), idp_urls=params.idp_urls)


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

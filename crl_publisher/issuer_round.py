"""One issuer's part of a publishing round: which of its scopes' CRLs are due, their numbers,
contents and validity, built, signed and checked inside the round's snapshot (the rules are in
crl_publisher/publisher.py's docstring: what is due, numbers, delta contents, expiry, bad rows).
`publish_round` (crl_publisher/publisher.py) locks, stores and writes what this builds.
"""

from __future__ import annotations

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
    stream_shard_entries,
)
from crl_publisher.entries import stream_full_entries as _stream_entries
from crl_publisher.scopes import IssuerChanges, Previous, Scope, ScopeState, scope_states
from revoc.admin import shard_url
from revoc.crl_paths import UNSHARDED
from revoc.model import Issuer, Profile
from revoc.queries import queries
from revoc.settings import Settings
from revoc.signing import Signer, SigningError, open_signer, public_key_matches

log = logging.getLogger("revoc.publish")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NEVER = datetime(1, 1, 1, tzinfo=UTC)  # asyncpg sends it as a timestamp before any notAfter


@dataclass(slots=True)
class BuiltCrl:
    scope: Scope
    params: CrlParams
    der: bytes
    entries: int
    seconds: float
    max_change_seq: int
    skipped: list[SkippedRow] = field(default_factory=list)
    reencoded: list[ReencodedRow] = field(default_factory=list)
    sha256: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.der).digest()  # stored, logged and reported


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

# How the entries of several due shard CRLs of one issuer are read. Normally one query per shard:
# an index-only range scan of certificates_revoked (migration 0011), each shard's entries
# contiguous and in serial order, decoded like an unsharded CRL's. But an index-only scan visits
# the heap for the rows on pages not all-visible (changed since the last VACUUM), and the
# shards' rows are interleaved in the heap, so after a bulk change (a mass revocation, an import
# not vacuumed yet) one query per shard would read the heap once per shard: then, from
# ONE_PASS_SHARDS due shards on, their entries come in one pass over the issuer's rows in serial
# order, split by shard in Python (crl_publisher/entries.py stream_shard_entries; 0.4 s of CPU
# more at 1M entries). "Bulk": more rows changed since vacuumed than CHURN_FRACTION of the
# table's live rows and CHURN_ROWS (crl_certificates_churn). Either way the same entries.
ONE_PASS_SHARDS = 2
CHURN_FRACTION = 0.02
CHURN_ROWS = 10_000


@dataclass(slots=True)
class _FullCrl:
    """A full CRL being built: its parameters, expiry cutoff, entries, and the row count once
    its entries were read in a pass shared with other shards."""

    params: CrlParams
    cutoff: datetime
    assembler: CrlAssembler
    expected: int | None = None


class IssuerRound:
    """Builds and checks every due CRL of one issuer inside the round's snapshot."""

    def __init__(self, conn: asyncpg.Connection, settings: Settings, issuer: Issuer,
                 scopes: Sequence[Scope], *, now: datetime, exact_now: datetime, horizon: int,
                 force_full: bool, publish_changes: bool, full_on_change_delay: int = 0) -> None:
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
        found: dict[int, set[str]] = {}
        for row in await self.conn.fetch(queries()["crl_shard_urls"], self.issuer.id):
            urls = found.setdefault(row["shard"], set())
            # A certificate without a stored URL (index.txt import): the default URL applies.
            urls.add(row["crl_url"] if row["crl_url"] is not None
                     else shard_url(self.settings.public_url, self.issuer.name, row["shard"]))
        return {shard: tuple(sorted(urls)) for shard, urls in found.items()}

    async def build(self, signer: Signer) -> list[BuiltCrl]:
        settings = self.settings
        deltas = self.deltas
        urls: dict[int, tuple[str, ...]] | None = None
        built: list[BuiltCrl] = []
        due = [(state, *self._full_due(state)) for state in self.states]
        fulls: dict[int, _FullCrl] = {}
        for state, full_due, _changed in due:
            if not full_due:
                continue
            scope = state.scope
            if scope.shard != UNSHARDED and urls is None:
                urls = await self.shard_urls()
            idp = () if scope.shard == UNSHARDED else (
                (urls or {}).get(scope.shard)
                or (shard_url(settings.public_url, self.issuer.name, scope.shard),))
            fulls[scope.shard] = self._full_crl(signer, state, idp)
        await self._stream_shards(fulls)
        for state, full_due, changed in due:
            scope, last_full, last_delta = state.scope, state.last_full, state.last_delta
            full: BuiltCrl | None = None
            if full_due:
                full = await self.build_full(signer, state, fulls.pop(scope.shard))
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

    def _full_due(self, state: ScopeState) -> tuple[bool, bool]:
        """(whether the scope's full CRL is due, whether it has changes its CRLs lack)."""
        last_full = state.last_full
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
        full_due = (self.force_full or _due(last_full, self.settings.crl_full_interval, self.now)
                    or full_on_change)
        return full_due, changed

    async def _stream_shards(self, fulls: dict[int, _FullCrl]) -> None:
        """Fill the entries of the due shard CRLs in one pass when there are several
        (crl_publisher/entries.py stream_shard_entries); the others stream one by one."""
        shards = {shard: full for shard, full in fulls.items() if shard != UNSHARDED}
        if len(shards) < ONE_PASS_SHARDS or not await heap_churned(self.conn):
            return
        counts = await stream_shard_entries(
            self.conn, self.issuer.id,
            {shard: (full.cutoff, full.assembler) for shard, full in shards.items()},
            f"issuer {self.issuer.name}'s shard CRLs")
        for shard, full in shards.items():
            full.expected = counts[shard]

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

    def _full_crl(self, signer: Signer, state: ScopeState, idp: tuple[str, ...]) -> _FullCrl:
        """The parameters of a scope's next full CRL and an assembler for its entries."""
        scope, last_full, max_number = state.scope, state.last_full, state.max_number
        number = _clock_number(self.exact_now)
        if max_number is not None and number <= max_number:
            number = max_number + 1
        this_update, next_update = self._this_next(self.settings.crl_full_validity, last_full)
        freshest = scope.url(self.settings, CrlKind.DELTA) if self.deltas else None
        params = CrlParams(CrlKind.FULL, self.issuer.subject_der, self.issuer.key_id, number,
                           this_update, next_update, idp_urls=idp, freshest_url=freshest)
        cutoff = last_full.this_update if last_full is not None else _NEVER
        return _FullCrl(params, cutoff, CrlAssembler(params, signer.algorithm_identifier))

    async def build_full(self, signer: Signer, state: ScopeState, full: _FullCrl) -> BuiltCrl:
        started = time.perf_counter()
        scope, max_number = state.scope, state.max_number
        params, cutoff, assembler = full.params, full.cutoff, full.assembler
        expected = full.expected
        if expected is None:
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
            return BuiltCrl(scope, params, der, report.included, time.perf_counter() - started,
                          self.horizon, report.skipped, report.reencoded)
        return BuiltCrl(scope, params, der, expected, time.perf_counter() - started, self.horizon)

    async def build_delta(self, signer: Signer, state: ScopeState,
                          full: BuiltCrl | None) -> BuiltCrl:
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
            return BuiltCrl(scope, params, der, report.included, time.perf_counter() - started,
                          self.horizon, report.skipped, report.reencoded)
        return BuiltCrl(scope, params, der, count, time.perf_counter() - started, self.horizon)

    def reflected_after(self, built: Sequence[BuiltCrl]) -> dict[int, int | None]:
        """What each scope's CRLs reflect once `built` is stored."""
        published = {item.scope.shard for item in built}
        return {s.scope.shard: (self.horizon if s.scope.shard in published else s.reflected)
                for s in self.states}

    def newly_reflected(self, built: Sequence[BuiltCrl]) -> list[tuple[datetime, int]]:
        published = {item.scope.shard for item in built}
        result: list[tuple[datetime, int]] = []
        for state in self.states:
            if state.scope.shard in published:
                result += self.changes.newly_reflected(state, self.horizon)
        return result


async def heap_churned(conn: asyncpg.Connection) -> bool:
    """Whether many rows of certificates changed since they were vacuumed (see
    ONE_PASS_SHARDS)."""
    row = await conn.fetchrow(queries()["crl_certificates_churn"])
    churn, live = int(row["churn"]), int(row["live"])
    return churn > CHURN_ROWS and churn > CHURN_FRACTION * live


def publishes_deltas(settings: Settings, issuer: Issuer) -> bool:
    """Deltas (and freshestCRL on the full CRLs) when `crl_delta_interval` is set, but not for
    issuers with the br profile unless `crl_br_deltas`: TLS BR §7.2.2 lists the CRL extensions
    a BR CRL carries and makes every other one NOT RECOMMENDED."""
    if settings.crl_delta_interval <= 0:
        return False
    return issuer.profile is not Profile.BR or settings.crl_br_deltas


def load_signer(issuer: Issuer, *, rsa_pss: bool = False) -> Signer:
    """The CA's CRL signing key, checked against the CA certificate."""
    assert issuer.key_path is not None
    try:
        signer = open_signer(issuer.key_path, rsa_pss=rsa_pss)
    except SigningError as exc:
        raise PublishError(str(exc)) from None
    if not public_key_matches(signer, x509.load_der_x509_certificate(issuer.cert_der)):
        raise PublishError(f"{issuer.key_path} does not match the CA certificate's key")
    return signer

"""The pre-signing loop: keep a fresh signed OCSP response in `ocsp_responses` for every
certificate of every issuer and every CertID hash algorithm of `settings.ocsp_hashes`.

Two kinds of work, one signing path:

- Changes (a revocation, a reason change, an unhold) come from the durable queue `ocsp_pending`,
  which a trigger fills in the changing transaction: responder/presign_queue.py claims rows with
  SKIP LOCKED, signs them and deletes them in the transaction that stores the responses, so each
  change is signed exactly once however many presigners run, and none is lost while none runs.
- Refreshes and certificates without a response come from the sweep (`Presigner.sweep`), which
  walks each issuer's certificates in keyset pages of `BATCH_ROWS`, asks PostgreSQL which of them
  need signing (response missing, signed from an older certificate row, or due: CONFORMANCE BR-5
  via `settings.refresh_after`), has the process pool sign them (responder/presign_worker.py) and
  merges the DER back with one INSERT ... ON CONFLICT over arrays. A certificate with a queued
  change is the queue's, not the sweep's. Only one page is in memory at a time, so a million
  certificates cost what ten thousand do; storing page k overlaps with signing page k+1.

`presign_once` (responder/presign_queue.py) drains the queue, then sweeps. The continuous mode
(`run_presigner`) lives in responder/presign_loop.py.

One bad row never stops the work: rows are encoded in chunks, and a chunk that raises is encoded
row by row, so the row the encoder cannot handle (a revocation time of -infinity, a reason code it
does not know) is quarantined (revoc/quarantine.py: logged once with issuer and serial, counted,
kept for `revoc status`), skipped, and everything else is signed. The report lists it and
`presign --once` exits 1.

Policy on responder expiry (OCSP-SIGNER-6): when the signing certificate's notAfter falls before a
response's nextUpdate, nextUpdate is clamped to that notAfter and a warning is logged; a signer
that has already expired is refused like an unreadable key (the issuer is skipped with one error
line and `presign --once` exits 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from cryptography import x509

from responder.presign_worker import IssuerSigning, SignedRows, sign_rows, warm_up
from revoc.admin import list_issuers, serial_hex
from revoc.clock import Clock, SystemClock, utc_seconds
from revoc.der.ocsp_batch import CertRow, ResponseTimes
from revoc.der.ocsp_certs import certs_id
from revoc.model import Issuer
from revoc.notify import encode_serial_change
from revoc.quarantine import quarantine_row, release_rows
from revoc.queries import queries
from revoc.settings import Settings
from revoc.signing import SigningError, is_pkcs11_uri, open_signer, public_key_matches

log = logging.getLogger("revoc.presign")

BATCH_ROWS = 10_000  # certificates read, signed and stored per page
MIN_CHUNK_ROWS = 200  # below this, splitting a page over more workers costs more than it saves
NOTIFY_EACH_LIMIT = 1_000  # beyond this many changed serials in one sweep, send "<id>:*" instead
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
             asyncpg.TargetServerAttributeNotMatched)


class PresignError(Exception):
    """An issuer cannot be signed for (key unreadable or not matching, signer expired)."""


@dataclass(frozen=True, slots=True)
class PresignReport:
    """What one round did; `rate` is responses per second of wall time."""

    issuers: int = 0
    failed_issuers: tuple[str, ...] = ()
    busy_issuers: tuple[str, ...] = ()  # left to another presigner sweeping them right now
    certificates: int = 0
    responses: int = 0
    seconds: float = 0.0
    changes: int = 0  # queued changes reflected (ocsp_pending rows deleted)
    quarantined: tuple[str, ...] = ()  # "issuer SERIAL" of rows that could not be signed
    drained: bool = True  # the queue was emptied (a drain with a time budget may stop early)

    @property
    def rate(self) -> float:
        return self.responses / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failed_issuers and not self.quarantined

    def __add__(self, other: PresignReport) -> PresignReport:
        return PresignReport(
            issuers=max(self.issuers, other.issuers),
            failed_issuers=tuple(dict.fromkeys(self.failed_issuers + other.failed_issuers)),
            busy_issuers=tuple(dict.fromkeys(self.busy_issuers + other.busy_issuers)),
            certificates=self.certificates + other.certificates,
            responses=self.responses + other.responses,
            seconds=self.seconds + other.seconds,
            changes=self.changes + other.changes,
            quarantined=tuple(dict.fromkeys(self.quarantined + other.quarantined)),
            drained=self.drained and other.drained,
        )


def refresh_lead(settings: Settings) -> int:
    """Seconds by which a refresh is brought forward, so a long round still re-signs each response
    *before* refresh_after has passed (BR-5), not just after."""
    return min(300, settings.refresh_after // 10)


def make_executor(processes: int) -> ProcessPoolExecutor:
    """The signing pool. forkserver: workers never inherit the event loop or database sockets."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["responder.presign_worker"])
    return ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=warm_up)


@dataclass(frozen=True, slots=True)
class Plan:
    """An issuer checked for signing: what workers get, and the signer's notAfter."""

    issuer: Issuer
    spec: IssuerSigning
    signer_not_after: datetime


def plan_issuer(issuer: Issuer, settings: Settings) -> Plan:
    """Check in this process that the issuer's OCSP key loads and matches its certificate, so a
    bad key is one clear error here rather than a failure inside every worker."""
    key_path = issuer.ocsp_key
    if key_path is None:
        raise PresignError("no OCSP signing key configured")
    try:
        signer = open_signer(key_path, rsa_pss=settings.rsa_pss)
        mtime_ns = 0 if is_pkcs11_uri(key_path) else Path(key_path).stat().st_mtime_ns
    except (SigningError, OSError) as exc:
        raise PresignError(str(exc)) from None
    signer_der = issuer.ocsp_cert_der if issuer.ocsp_key_path else None
    signer_cert = x509.load_der_x509_certificate(signer_der or issuer.cert_der)
    if not public_key_matches(signer, signer_cert):
        raise PresignError(f"{key_path} does not match the signing certificate")
    spec = IssuerSigning(
        issuer_id=issuer.id,
        issuer_subject_der=issuer.subject_der,
        issuer_cert_der=issuer.cert_der,
        key_path=key_path,
        key_mtime_ns=mtime_ns,
        responder_cert_der=signer_der,
        hash_algorithms=settings.ocsp_hashes,
        rsa_pss=settings.rsa_pss,
    )
    return Plan(issuer, spec, signer_cert.not_valid_after_utc)


@dataclass(slots=True)
class _Tally:
    certificates: int = 0
    responses: int = 0
    failed: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Signed:
    """One batch signed: the rows that encoded with their DER (row-major over the hash
    algorithms), and the rows that did not with the error text."""

    rows: list[asyncpg.Record]
    ders: list[bytes]
    failures: list[tuple[asyncpg.Record, str]]


def _row_problem(row: asyncpg.Record) -> str | None:
    """What makes a row unsignable before the encoder sees it (None: nothing)."""
    if not row["serial"]:
        return "empty serial"
    if row["revoked"] and row["revoked_at"] is None:
        # The guard in sql/queries/presign.sql: a time Python cannot hold. Never sign it `good`.
        return "revocation time outside the years 1 to 9999"
    return None


@dataclass(slots=True)
class _Pages:
    """State of one issuer's sweep across its pages."""

    notified: int = 0  # serials named in ocsp_changed payloads so far
    star: bool = False  # too many: send "<id>:*" at the end instead
    store: asyncio.Task[None] | None = None  # the previous page, being stored


async def _unlock(conn: asyncpg.Connection, issuer_id: int) -> None:
    """Release the issuer's sweep lock; if that fails, end the session (the server then drops
    the lock) rather than hand a connection holding it back to the pool."""
    try:
        await asyncio.shield(conn.execute(queries().presign_issuer_unlock, issuer_id))
    except BaseException:
        conn.terminate()
        raise


class Presigner:
    """Signs what is due; shared by `presign_once`, `run_presigner` and the queue drain
    (responder/presign_queue.py).

    One sweep per issuer at a time across presigners (an advisory lock per issuer): a second
    presigner (a standby, or `presign --once` next to the service) does not sign the same rows
    twice. `presign --once` waits for the lock; the continuous mode leaves a busy issuer to the
    presigner sweeping it. Changes do not go through the sweep: they are queued (`ocsp_pending`)
    and each is claimed by one presigner, so a revocation never waits for someone's long sweep.
    """

    def __init__(
        self, pool: asyncpg.Pool, settings: Settings, executor: Executor, clock: Clock | None,
        *, wait_for_busy: bool = True,
    ) -> None:
        self.pool = pool
        # An issuer another presigner is sweeping: wait for it (True), or leave it to that one.
        self._wait_for_busy = wait_for_busy
        self.settings = settings
        self.executor = executor
        self._clock = clock or SystemClock()
        self.hash_codes = [alg.value for alg in settings.ocsp_hashes]
        self._lead = refresh_lead(settings)
        self._clamp_warned: set[int] = set()
        self._plan_errors: dict[int, str] = {}  # issuer id -> the error last logged for it
        # Cumulative, for the heartbeat: responses stored, changes reflected, rows quarantined.
        self.counters: dict[str, int] = {}
        # certs elements of the records built so far, by responder_certs id (revoc/der/ocsp_certs)
        self._certs_blocks: dict[int, bytes] = {}

    def count(self, name: str, amount: int) -> None:
        if amount:
            self.counters[name] = self.counters.get(name, 0) + amount

    # ------------------------------------------------------------------ rounds

    async def sweep(
        self, issuers: Sequence[Issuer] | None = None, *, force: Iterable[int] = ()
    ) -> PresignReport:
        """Sign every missing, stale or due response of the issuers (default: all of them);
        issuers whose id is in `force` are re-signed completely."""
        started = time.perf_counter()
        if issuers is None:
            async with self.pool.acquire() as conn:
                issuers = await list_issuers(conn)
        forced = set(force)
        tally = _Tally()
        for issuer in issuers:
            try:
                plan = self.plan(issuer)
                await self._sweep_issuer(plan, issuer.id in forced, tally)
            except PresignError as exc:
                self.plan_failed(issuer, exc)  # the signer expired during the sweep
                tally.failed.append(issuer.name)
        report = PresignReport(
            issuers=len(issuers), failed_issuers=tuple(tally.failed),
            busy_issuers=tuple(tally.busy),
            certificates=tally.certificates, responses=tally.responses,
            seconds=time.perf_counter() - started, quarantined=tuple(tally.quarantined),
        )
        log.info(
            "presign round: %d response(s) for %d certificate(s) of %d issuer(s) in %.2f s "
            "(%.0f responses/s)%s%s", report.responses, report.certificates, report.issuers,
            report.seconds, report.rate,
            f"; {len(report.failed_issuers)} issuer(s) failed" if report.failed_issuers else "",
            f"; {len(report.quarantined)} row(s) quarantined" if report.quarantined else "",
        )
        if report.busy_issuers:
            log.info("presign: left to another presigner sweeping them now: %s",
                     ", ".join(report.busy_issuers))
        return report

    async def _sweep_issuer(self, plan: Plan, force: bool, tally: _Tally) -> None:
        q = queries()
        pages = _Pages()
        try:
            async with self.pool.acquire() as conn:
                if self._wait_for_busy:
                    await conn.execute(q.presign_issuer_lock, plan.issuer.id)
                elif not await conn.fetchval(q.presign_issuer_try_lock, plan.issuer.id):
                    tally.busy.append(plan.issuer.name)
                    return
                try:
                    await self._sweep_pages(conn, plan, force, tally, pages)
                    if pages.store is not None:
                        await pages.store
                        pages.store = None
                finally:
                    await _unlock(conn, plan.issuer.id)
            if pages.star:
                await self.pool.execute(q.presign_notify_changed,
                                        [encode_serial_change(plan.issuer.id, None)])
            cutoff = self.expired_before(utc_seconds(self._clock.now()))
            if cutoff is not None:
                dropped = await self.pool.execute(q.presign_drop_expired, plan.issuer.id, cutoff)
                if dropped != "DELETE 0":
                    log.info("presign: issuer %s: %s response(s) of certificates expired before "
                             "%s dropped", plan.issuer.name, dropped.split()[-1],
                             f"{cutoff:%Y-%m-%d %H:%M:%SZ}")
        finally:
            if pages.store is not None and not pages.store.done():
                pages.store.cancel()
                with contextlib.suppress(asyncio.CancelledError, *DB_ERRORS):
                    await pages.store

    async def _sweep_pages(self, conn: asyncpg.Connection, plan: Plan, force: bool,
                           tally: _Tally, pages: _Pages) -> None:
        """Read, sign and store the issuer's due certificates page by page; storing page k
        (`pages.store`) overlaps with signing page k+1."""
        q = queries()
        last = b""
        while True:
            now = utc_seconds(self._clock.now())
            fresh_after = now - timedelta(seconds=self.settings.refresh_after - self._lead)
            rows = await conn.fetch(
                q.presign_due_certificates, plan.issuer.id, last, self.hash_codes,
                fresh_after, now + timedelta(seconds=self._lead), BATCH_ROWS, force,
                self.expired_before(now))
            if not rows:
                return
            last = rows[-1]["serial"]
            times = self.times(plan)
            signed = await self.sign(plan, times, rows, conn)
            changed = [r["serial"] for r in signed.rows if r["changed"]]
            payloads: list[str] = []
            if not pages.star and pages.notified + len(changed) <= NOTIFY_EACH_LIMIT:
                payloads = [encode_serial_change(plan.issuer.id, s) for s in changed]
                pages.notified += len(changed)
            elif changed:
                pages.star = True
            if pages.store is not None:
                await pages.store  # at most one page waits to be stored
            pages.store = asyncio.create_task(self._store(plan, times, signed, payloads))
            tally.certificates += len(signed.rows)
            tally.responses += len(signed.ders)
            tally.quarantined += [f"{plan.issuer.name} {serial_hex(r['serial'])}"
                                  for r, _error in signed.failures]
            if len(rows) < BATCH_ROWS:
                return

    async def sign_unsigned(self, issuer: Issuer, serials: Sequence[bytes]) -> int:
        """Sign the named certificates that have no current response and no queued change (a
        certificate just added, named by cert_changed), NOTIFY ocsp_changed for each; returns
        the certificates signed. Changes are the queue's (responder/presign_queue.py)."""
        try:
            plan = self.plan(issuer)
        except PresignError:
            return 0
        rows = await self.pool.fetch(
            queries().presign_unsigned_certificates, issuer.id, list(serials), self.hash_codes,
            self.expired_before(utc_seconds(self._clock.now())))
        if not rows:
            return 0
        times = self.times(plan)
        signed = await self.sign(plan, times, rows)
        payloads = [encode_serial_change(issuer.id, r["serial"]) for r in signed.rows]
        await self._store(plan, times, signed, payloads)
        return len(signed.rows)

    # ------------------------------------------------------------------ pieces

    def plan(self, issuer: Issuer) -> Plan:
        """`plan_issuer` plus the signer's expiry, logging a failure once per issuer and error
        (not on every wake-up) and a recovery once."""
        try:
            plan = plan_issuer(issuer, self.settings)
            self.times(plan)  # an expired signer fails here, before anything is read
        except PresignError as exc:
            self.plan_failed(issuer, exc)
            raise
        if self._plan_errors.pop(issuer.id, None) is not None:
            log.info("presign: issuer %s can be signed for again", issuer.name)
        return plan

    def plan_failed(self, issuer: Issuer, exc: PresignError) -> None:
        if self._plan_errors.get(issuer.id) != str(exc):
            self._plan_errors[issuer.id] = str(exc)
            log.error("presign: issuer %s skipped: %s", issuer.name, exc)

    def expired_before(self, now: datetime) -> datetime | None:
        """Certificates whose notAfter is at or before this are past retention (None: keep
        signing forever)."""
        keep = self.settings.ocsp_keep_expired
        return None if keep == 0 else now - timedelta(seconds=keep)

    def now(self) -> datetime:
        return utc_seconds(self._clock.now())

    def times(self, plan: Plan) -> ResponseTimes:
        """producedAt = now, thisUpdate backdated (OCSP-RESP-8), nextUpdate always present
        (OCSP-RESP-7) and clamped to the signer's notAfter (OCSP-SIGNER-6)."""
        now = utc_seconds(self._clock.now())
        this_update = now - timedelta(seconds=self.settings.ocsp_backdate)
        next_update = this_update + timedelta(seconds=self.settings.ocsp_validity)
        if plan.signer_not_after <= now:
            raise PresignError(f"its OCSP signing certificate expired at "
                               f"{plan.signer_not_after:%Y-%m-%d %H:%M:%SZ}")
        if next_update > plan.signer_not_after:
            next_update = utc_seconds(plan.signer_not_after)
            if plan.issuer.id not in self._clamp_warned:
                self._clamp_warned.add(plan.issuer.id)
                log.warning("presign: issuer %s: signing certificate expires %s, before the "
                            "wanted nextUpdate; nextUpdate clamped to it (renew the responder "
                            "certificate)", plan.issuer.name, f"{next_update:%Y-%m-%d %H:%M:%SZ}")
        return ResponseTimes(produced_at=now, this_update=this_update, next_update=next_update)

    async def sign(
        self, plan: Plan, times: ResponseTimes, rows: Sequence[asyncpg.Record],
        conn: asyncpg.Connection | None = None,
    ) -> Signed:
        """Spread rows over the workers. A row that cannot be encoded is quarantined (logged
        once, recorded on `conn`, else on a pool connection) and left out; the others are
        signed (see the module docstring)."""
        failures: list[tuple[asyncpg.Record, str]] = []
        good: list[asyncpg.Record] = []
        for row in rows:
            problem = _row_problem(row)
            if problem is None:
                good.append(row)
            else:
                failures.append((row, problem))
        cert_rows: list[CertRow] = [(bytes(r["serial"]), r["revoked_at"], r["reason"],
                                     r["invalidity_date"] if r["revoked"] else None)
                                    for r in good]
        processes = self.settings.presign_processes
        parts = max(1, min(processes, math.ceil(len(cert_rows) / MIN_CHUNK_ROWS)))
        size = math.ceil(len(cert_rows) / parts) if cert_rows else 1
        loop = asyncio.get_running_loop()
        chunks: list[SignedRows] = await asyncio.gather(*(
            loop.run_in_executor(self.executor, sign_rows, plan.spec, times,
                                 cert_rows[i:i + size])
            for i in range(0, len(cert_rows), size)
        ))
        signed_rows: list[asyncpg.Record] = []
        ders: list[bytes] = []
        for start, chunk in zip(range(0, len(cert_rows), size), chunks, strict=True):
            bad = {index for index, _error in chunk.failures}
            failures += [(good[start + index], error) for index, error in chunk.failures]
            signed_rows += [good[start + index] for index in range(len(good[start:start + size]))
                            if index not in bad]
            ders += chunk.ders
        for row, error in failures:
            await quarantine_row(conn or self.pool, "presign", plan.issuer.id, plan.issuer.name,
                                 bytes(row["serial"]), row["change_seq"], error)
        self.count("rows_quarantined", len(failures))
        return Signed(signed_rows, ders, failures)

    def records(self, plan: Plan, times: ResponseTimes, signed: Signed) -> list[tuple[Any, ...]]:
        """Rows for presign_store, one per (certificate, hash algorithm): DER stems and the
        responder_certs id of the certs element the responder splices in (None: the CA signs)."""
        hashes = self.settings.ocsp_hashes
        block = plan.spec.certs_block()
        block_id = None
        if block is not None:
            block_id = certs_id(block)
            self._certs_blocks[block_id] = block
        out: list[tuple[Any, ...]] = []
        for index, row in enumerate(signed.rows):
            serial, seq = row["serial"], row["change_seq"]
            for offset, algorithm in enumerate(hashes):
                out.append((plan.issuer.id, serial, algorithm.value,
                            signed.ders[index * len(hashes) + offset], times.produced_at,
                            times.this_update, times.next_update, seq, block_id))
        return out

    async def merge(self, conn: asyncpg.Connection, records: Sequence[tuple[Any, ...]]) -> None:
        """Store signed responses in the caller's transaction (one statement over arrays)."""
        if not records:
            return
        q = queries()
        ids = sorted({record[-1] for record in records} - {None})
        if ids:
            # Before the rows that name them, in the same transaction (no foreign key: it would
            # cost a lookup per row; responder_certs rows are never deleted).
            clashes = await conn.fetchval(q.presign_responder_certs_put, ids,
                                          [self._certs_blocks[i] for i in ids])
            if clashes:
                raise PresignError(f"responder_certs: another certs element is stored under "
                                   f"one of the ids {ids} (SHA-256 prefix collision)")
        await conn.execute(q.presign_store, *(list(column) for column in zip(*records,
                                                                             strict=True)))
        self.count("responses_signed", len(records))

    async def _store(
        self, plan: Plan, times: ResponseTimes, signed: Signed, payloads: Sequence[str],
    ) -> None:
        records = self.records(plan, times, signed)
        if not records:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await self.merge(conn, records)
            if payloads:
                await conn.execute(queries().presign_notify_changed, list(payloads))
            await release_rows(conn, "presign", plan.issuer.id,
                               [r["serial"] for r in signed.rows if r["changed"]])

    async def seconds_until_due(self, ceiling: float) -> float:
        """Seconds until the earliest stored response falls due (at most `ceiling`).

        Derived from min(nextUpdate), which the index serves; a clamped nextUpdate (OCSP-SIGNER-6)
        makes that estimate too early, so an estimate in the past falls back to the ceiling.
        """
        earliest = await self.pool.fetchval(queries().presign_earliest_next_update)
        if earliest is None:
            return ceiling
        ahead = self.settings.ocsp_validity - self.settings.refresh_after + self._lead
        delta = (earliest - timedelta(seconds=ahead) - self._clock.now()).total_seconds()
        return ceiling if delta <= 0 else min(delta, ceiling)

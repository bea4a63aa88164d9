"""The pre-signing loop: keep a fresh signed OCSP response in `ocsp_responses` for every
certificate of every issuer and every CertID hash algorithm of `settings.ocsp_hashes`.

A round (`Presigner.sweep`, `presign_once`) walks each issuer's certificates in keyset pages of
`BATCH_ROWS`, asks PostgreSQL which of them need signing (response missing, signed from an older
certificate row, or due: CONFORMANCE BR-5 via `settings.refresh_after`), has the process pool sign
them (responder/presign_worker.py) and merges the DER back with COPY + INSERT ... ON CONFLICT. Only
one page is in memory at a time, so a million certificates cost what ten thousand do; storing page
k overlaps with signing page k+1.

The continuous mode (`run_presigner`, NOTIFY-driven re-signing and scheduled sweeps) lives in
responder/presign_loop.py and uses `Presigner` from here.

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

from responder.presign_worker import IssuerSigning, sign_chunk, warm_up
from revoc.admin import list_issuers, serial_hex
from revoc.clock import Clock, SystemClock, utc_seconds
from revoc.der.ocsp_batch import CertRow, ResponseTimes
from revoc.model import Issuer
from revoc.queries import queries
from revoc.settings import Settings
from revoc.signing import FileKeySigner, SigningError, public_key_matches

log = logging.getLogger("revoc.presign")

BATCH_ROWS = 10_000  # certificates read, signed and stored per page
MIN_CHUNK_ROWS = 200  # below this, splitting a page over more workers costs more than it saves
NOTIFY_EACH_LIMIT = 1_000  # beyond this many changed serials in one sweep, send "<id>:*" instead
_STAGE_COLUMNS = ("issuer_id", "serial", "hash_alg", "der", "produced_at", "this_update",
                  "next_update", "cert_change_seq")
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


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

    @property
    def rate(self) -> float:
        return self.responses / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failed_issuers


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
class _Plan:
    """An issuer checked for signing: what workers get, and the signer's notAfter."""

    issuer: Issuer
    spec: IssuerSigning
    signer_not_after: datetime


def plan_issuer(issuer: Issuer, settings: Settings) -> _Plan:
    """Check in this process that the issuer's OCSP key loads and matches its certificate, so a
    bad key is one clear error here rather than a failure inside every worker."""
    key_path = issuer.ocsp_key
    if key_path is None:
        raise PresignError("no OCSP signing key configured")
    try:
        signer = FileKeySigner.from_file(key_path)
        mtime_ns = Path(key_path).stat().st_mtime_ns
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
    )
    return _Plan(issuer, spec, signer_cert.not_valid_after_utc)


@dataclass(slots=True)
class _Tally:
    certificates: int = 0
    responses: int = 0
    failed: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)


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
    """Signs what is due; shared by `presign_once` and `run_presigner`.

    One sweep per issuer at a time across presigners (an advisory lock per issuer): a second
    presigner (a standby, or `presign --once` next to the service) does not sign the same rows
    twice. `presign --once` waits for the lock; the continuous mode leaves a busy issuer to the
    presigner sweeping it. Notifications are handled by every presigner regardless: a revocation
    must not wait for someone else's long sweep.
    """

    def __init__(
        self, pool: asyncpg.Pool, settings: Settings, executor: Executor, clock: Clock | None,
        *, wait_for_busy: bool = True,
    ) -> None:
        self._pool = pool
        # An issuer another presigner is sweeping: wait for it (True), or leave it to that one.
        self._wait_for_busy = wait_for_busy
        self._settings = settings
        self._executor = executor
        self._clock = clock or SystemClock()
        self._hash_codes = [alg.value for alg in settings.ocsp_hashes]
        self._lead = refresh_lead(settings)
        self._clamp_warned: set[int] = set()

    # ------------------------------------------------------------------ rounds

    async def sweep(
        self, issuers: Sequence[Issuer] | None = None, *, force: Iterable[int] = ()
    ) -> PresignReport:
        """Sign every missing, stale or due response of the issuers (default: all of them);
        issuers whose id is in `force` are re-signed completely."""
        started = time.perf_counter()
        if issuers is None:
            async with self._pool.acquire() as conn:
                issuers = await list_issuers(conn)
        forced = set(force)
        tally = _Tally()
        for issuer in issuers:
            try:
                plan = plan_issuer(issuer, self._settings)
                await self._sweep_issuer(plan, issuer.id in forced, tally)
            except PresignError as exc:
                log.error("presign: issuer %s skipped: %s", issuer.name, exc)
                tally.failed.append(issuer.name)
        report = PresignReport(
            issuers=len(issuers), failed_issuers=tuple(tally.failed),
            busy_issuers=tuple(tally.busy),
            certificates=tally.certificates, responses=tally.responses,
            seconds=time.perf_counter() - started,
        )
        log.info(
            "presign round: %d response(s) for %d certificate(s) of %d issuer(s) in %.2f s "
            "(%.0f responses/s)%s", report.responses, report.certificates, report.issuers,
            report.seconds, report.rate,
            f"; {len(report.failed_issuers)} issuer(s) failed" if report.failed_issuers else "",
        )
        if report.busy_issuers:
            log.info("presign: left to another presigner sweeping them now: %s",
                     ", ".join(report.busy_issuers))
        return report

    async def _sweep_issuer(self, plan: _Plan, force: bool, tally: _Tally) -> None:
        q = queries()
        pages = _Pages()
        try:
            async with self._pool.acquire() as conn:
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
                await self._pool.execute(q.presign_notify_changed, [f"{plan.issuer.id}:*"])
            cutoff = self._expired_before(utc_seconds(self._clock.now()))
            if cutoff is not None:
                dropped = await self._pool.execute(q.presign_drop_expired, plan.issuer.id, cutoff)
                if dropped != "DELETE 0":
                    log.info("presign: issuer %s: %s response(s) of certificates expired before "
                             "%s dropped", plan.issuer.name, dropped.split()[-1],
                             f"{cutoff:%Y-%m-%d %H:%M:%SZ}")
        finally:
            if pages.store is not None and not pages.store.done():
                pages.store.cancel()
                with contextlib.suppress(asyncio.CancelledError, *DB_ERRORS):
                    await pages.store

    async def _sweep_pages(self, conn: asyncpg.Connection, plan: _Plan, force: bool,
                           tally: _Tally, pages: _Pages) -> None:
        """Read, sign and store the issuer's due certificates page by page; storing page k
        (`pages.store`) overlaps with signing page k+1."""
        q = queries()
        last = b""
        while True:
            now = utc_seconds(self._clock.now())
            fresh_after = now - timedelta(seconds=self._settings.refresh_after - self._lead)
            rows = await conn.fetch(
                q.presign_due_certificates, plan.issuer.id, last, self._hash_codes,
                fresh_after, now + timedelta(seconds=self._lead), BATCH_ROWS, force,
                self._expired_before(now))
            if not rows:
                return
            last = rows[-1]["serial"]
            changed = [r["serial"] for r in rows if r["changed"]]
            payloads: list[str] = []
            if not pages.star and pages.notified + len(changed) <= NOTIFY_EACH_LIMIT:
                payloads = [f"{plan.issuer.id}:{serial_hex(s)}" for s in changed]
                pages.notified += len(changed)
            elif changed:
                pages.star = True
            times = self._times(plan)
            ders = await self._sign(plan, times, rows)
            if pages.store is not None:
                await pages.store  # at most one page waits to be stored
            pages.store = asyncio.create_task(self._store(plan, times, rows, ders, payloads))
            tally.certificates += len(rows)
            tally.responses += len(ders)
            if len(rows) < BATCH_ROWS:
                return

    async def resign_serials(self, issuer: Issuer, serials: Sequence[bytes]) -> int:
        """Re-sign the named certificates at once (all hash algorithms) and NOTIFY ocsp_changed
        for each; serials the database does not know are ignored. Returns certificates signed."""
        plan = plan_issuer(issuer, self._settings)
        rows = await self._pool.fetch(
            queries().presign_certificates_by_serial, issuer.id, list(serials),
            self._expired_before(utc_seconds(self._clock.now())))
        if not rows:
            return 0
        times = self._times(plan)
        ders = await self._sign(plan, times, rows)
        payloads = [f"{issuer.id}:{serial_hex(r['serial'])}" for r in rows]
        await self._store(plan, times, rows, ders, payloads)
        return len(rows)

    # ------------------------------------------------------------------ pieces

    def _expired_before(self, now: datetime) -> datetime | None:
        """Certificates whose notAfter is at or before this are past retention (None: keep
        signing forever)."""
        keep = self._settings.ocsp_keep_expired
        return None if keep == 0 else now - timedelta(seconds=keep)

    def _times(self, plan: _Plan) -> ResponseTimes:
        """producedAt = now, thisUpdate backdated (OCSP-RESP-8), nextUpdate always present
        (OCSP-RESP-7) and clamped to the signer's notAfter (OCSP-SIGNER-6)."""
        now = utc_seconds(self._clock.now())
        this_update = now - timedelta(seconds=self._settings.ocsp_backdate)
        next_update = this_update + timedelta(seconds=self._settings.ocsp_validity)
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

    async def _sign(
        self, plan: _Plan, times: ResponseTimes, rows: Sequence[asyncpg.Record]
    ) -> list[bytes]:
        """Spread one page over the workers; returns DER row-major over the hash algorithms."""
        cert_rows: list[CertRow] = [(bytes(r["serial"]), r["revoked_at"], r["reason"])
                                    for r in rows]
        processes = self._settings.presign_processes
        parts = max(1, min(processes, math.ceil(len(cert_rows) / MIN_CHUNK_ROWS)))
        size = math.ceil(len(cert_rows) / parts)
        loop = asyncio.get_running_loop()
        chunks = await asyncio.gather(*(
            loop.run_in_executor(self._executor, sign_chunk, plan.spec, times,
                                 cert_rows[i:i + size])
            for i in range(0, len(cert_rows), size)
        ))
        return [der for chunk in chunks for der in chunk]

    async def _store(
        self, plan: _Plan, times: ResponseTimes, rows: Sequence[asyncpg.Record],
        ders: Sequence[bytes], payloads: Sequence[str],
    ) -> None:
        q = queries()
        hashes = self._settings.ocsp_hashes
        records: list[tuple[Any, ...]] = []
        for index, row in enumerate(rows):
            serial, seq = row["serial"], row["change_seq"]
            for offset, algorithm in enumerate(hashes):
                records.append((plan.issuer.id, serial, algorithm.value,
                                ders[index * len(hashes) + offset], times.produced_at,
                                times.this_update, times.next_update, seq))
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(q.presign_stage_create)
            await conn.copy_records_to_table("presign_stage", records=records,
                                             columns=_STAGE_COLUMNS)
            await conn.execute(q.presign_stage_merge)
            if payloads:
                await conn.execute(q.presign_notify_changed, list(payloads))

    async def seconds_until_due(self, ceiling: float) -> float:
        """Seconds until the earliest stored response falls due (at most `ceiling`).

        Derived from min(nextUpdate), which the index serves; a clamped nextUpdate (OCSP-SIGNER-6)
        makes that estimate too early, so an estimate in the past falls back to the ceiling.
        """
        earliest = await self._pool.fetchval(queries().presign_earliest_next_update)
        if earliest is None:
            return ceiling
        ahead = self._settings.ocsp_validity - self._settings.refresh_after + self._lead
        delta = (earliest - timedelta(seconds=ahead) - self._clock.now()).total_seconds()
        return ceiling if delta <= 0 else min(delta, ceiling)


async def presign_once(
    pool: asyncpg.Pool, settings: Settings, *, clock: Clock | None = None
) -> PresignReport:
    """Sign every due or missing response of every issuer, once; the report counts failures."""
    executor = make_executor(settings.presign_processes)
    try:
        return await Presigner(pool, settings, executor, clock).sweep()
    finally:
        await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)

"""The pre-signing loop: keep a fresh signed OCSP response in `ocsp_responses` for every
certificate of every issuer and every CertID hash algorithm of `settings.ocsp_hashes`.

A round (`Presigner.sweep`, `presign_once`) walks each issuer's certificates in keyset pages of
`BATCH_ROWS`, asks PostgreSQL which of them need signing (response missing, signed from an older
certificate row, or due: CONFORMANCE BR-5 via `settings.refresh_after`), has the process pool sign
them (responder/presign_worker.py) and merges the DER back with COPY + INSERT ... ON CONFLICT. Only
one page is in memory at a time, so a million certificates cost what ten thousand do; storing page
k overlaps with signing page k+1.

The continuous mode (`run_presigner`) LISTENs on `cert_changed`: a notification for one serial
re-signs that certificate at once and sends NOTIFY `ocsp_changed` in the same transaction as the
new rows (so a responder that hears it finds them); "<id>:*" sweeps that issuer. Between
notifications it sleeps until the earliest response falls due, polls the issuer list (a new issuer
is signed within `issuer_poll_interval`, well inside BR-6's 15 minutes; a changed signer re-signs
the issuer's whole cache, OCSP-SIGNER-6) and sweeps everything every `sweep_interval` anyway, in
case a notification was lost.

Policy on responder expiry (OCSP-SIGNER-6): when the signing certificate's notAfter falls before a
response's nextUpdate, nextUpdate is clamped to that notAfter and a warning is logged; a signer
that has already expired is refused like an unreadable key (the issuer is skipped with one error
line and `presign --once` exits 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import multiprocessing
import signal
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
SWEEP_INTERVAL = 300.0  # seconds between safety sweeps of the continuous mode
ISSUER_POLL_INTERVAL = 10.0  # seconds between looks at the issuer list (new issuers, rotations)
_STAGE_COLUMNS = ("issuer_id", "serial", "hash_alg", "der", "produced_at", "this_update",
                  "next_update", "cert_change_seq")
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


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
                with contextlib.suppress(asyncio.CancelledError, *_DB_ERRORS):
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


def _parse_payload(payload: str) -> tuple[int, bytes | None] | None:
    """"<issuer id>:<serial hex>" -> (id, serial octets); "<id>:*" -> (id, None); junk -> None."""
    issuer_text, _, serial_text = payload.partition(":")
    try:
        issuer_id = int(issuer_text)
        if serial_text == "*":
            return issuer_id, None
        return issuer_id, bytes.fromhex(serial_text)
    except ValueError:
        return None


async def _next_payloads(
    queue: asyncio.Queue[str], stop: asyncio.Event, wait_seconds: float,
    sweeping: asyncio.Task[None] | None,
) -> list[str]:
    """Wait up to `wait_seconds` for a notification, stop, or the end of the running sweep; then
    take every queued notification."""
    if queue.empty() and wait_seconds > 0 and not (sweeping is not None and sweeping.done()):
        getter = asyncio.ensure_future(queue.get())
        stopper = asyncio.ensure_future(stop.wait())
        waiting: set[asyncio.Future[Any]] = {getter, stopper}
        if sweeping is not None:
            waiting.add(sweeping)
        done, _ = await asyncio.wait(waiting, timeout=wait_seconds,
                                     return_when=asyncio.FIRST_COMPLETED)
        getter.cancel()  # never the sweep: it is not ours to cancel here
        stopper.cancel()
        if getter in done:
            queue.put_nowait(getter.result())
    payloads: list[str] = []
    while not queue.empty():
        payloads.append(queue.get_nowait())
    return payloads


def _signing_identity(issuer: Issuer) -> tuple[bytes, bytes | None, str | None]:
    return issuer.cert_der, issuer.ocsp_cert_der, issuer.ocsp_key


class _Loop:
    """State of the continuous mode between wake-ups.

    Sweeps run as a background task, one at a time, so that a notification is handled while a
    long refresh round is still going: its chunk only waits for the chunks already queued in the
    process pool. The merge's change_seq guard keeps the two from overwriting each other's newer
    rows.
    """

    def __init__(self, presigner: Presigner, stop: asyncio.Event, sweep_interval: float,
                 issuer_poll_interval: float) -> None:
        self.presigner = presigner
        self.stop = stop
        self.sweep_interval = sweep_interval
        self.issuer_poll_interval = issuer_poll_interval
        self.issuers: dict[int, Issuer] = {}
        self.want_full = True  # start-up: whatever changed while nobody listened
        self.wanted: set[int] = set()  # issuers to sweep ("<id>:*", new issuers)
        self.forced: set[int] = set()  # issuers to re-sign completely (new signer)
        self.sweeping: asyncio.Task[None] | None = None
        self.next_sweep = 0.0

    async def run(self, listener: asyncpg.Connection) -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()

        def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            queue.put_nowait(payload)

        # Listening first, then sweeping: nothing changed in between can be missed.
        await listener.add_listener("cert_changed", on_notify)
        try:
            self.issuers = {i.id: i for i in await list_issuers(listener)}
            clock = time.monotonic
            next_poll = clock() + self.issuer_poll_interval
            while not self.stop.is_set():
                self.start_sweep()
                deadline = next_poll if self.sweeping else min(self.next_sweep, next_poll)
                payloads = await _next_payloads(queue, self.stop, deadline - clock(),
                                                self.sweeping)
                if self.stop.is_set():
                    break
                if self.sweeping is not None and self.sweeping.done():
                    finished, self.sweeping = self.sweeping, None
                    finished.result()  # a database error ends this session; the caller retries
                if payloads:
                    await self.handle(listener, payloads)
                if clock() >= next_poll:
                    await self.poll_issuers(listener)
                    next_poll = clock() + self.issuer_poll_interval
                if self.sweeping is None and clock() >= self.next_sweep:
                    self.want_full = True
        finally:
            if self.sweeping is not None:
                self.sweeping.cancel()
                with contextlib.suppress(asyncio.CancelledError, *_DB_ERRORS):
                    await self.sweeping
            with contextlib.suppress(*_DB_ERRORS):
                await listener.remove_listener("cert_changed", on_notify)

    def start_sweep(self) -> None:
        """Start the wanted sweep in the background, unless one is running."""
        if self.sweeping is not None or not (self.want_full or self.wanted):
            return
        full = self.want_full
        issuers = [i for i in self.issuers.values() if full or i.id in self.wanted]
        force = set(self.forced)
        self.want_full = False
        self.wanted.clear()
        self.forced.clear()
        self.sweeping = asyncio.create_task(self._sweep(issuers, force, full))

    async def _sweep(self, issuers: Sequence[Issuer], force: set[int], full: bool) -> None:
        await self.presigner.sweep(issuers, force=force)
        if full:
            delay = await self.presigner.seconds_until_due(self.sweep_interval)
            self.next_sweep = time.monotonic() + delay

    async def handle(self, listener: asyncpg.Connection, payloads: Sequence[str]) -> None:
        """Re-sign single serials at once; "<id>:*" asks for a sweep of that issuer."""
        started = time.perf_counter()
        serials: dict[int, set[bytes]] = {}
        whole: set[int] = set()
        for payload in payloads:
            parsed = _parse_payload(payload)
            if parsed is None:
                log.warning("presign: ignoring cert_changed payload %r", payload)
            elif parsed[1] is None:
                whole.add(parsed[0])
            else:
                serials.setdefault(parsed[0], set()).add(parsed[1])
        if not self.issuers.keys() >= whole | serials.keys():
            await self.poll_issuers(listener)  # an issuer registered since the last poll
        signed = 0
        for issuer_id, wanted in serials.items():
            issuer = self.issuers.get(issuer_id)
            if issuer is None:
                continue
            try:
                signed += await self.presigner.resign_serials(issuer, sorted(wanted))
            except PresignError as exc:
                log.error("presign: issuer %s skipped: %s", issuer.name, exc)
        if signed:
            log.info("presign: re-signed %d certificate(s) after cert_changed in %.0f ms",
                     signed, (time.perf_counter() - started) * 1000)
        self.wanted.update(whole & self.issuers.keys())

    async def poll_issuers(self, listener: asyncpg.Connection) -> None:
        """Sign new issuers now (BR-6) and re-sign all of an issuer whose signer changed.

        Runs on the LISTEN connection, which doubles as its liveness check."""
        current = {i.id: i for i in await list_issuers(listener)}
        new = {i.id for i in current.values() if i.id not in self.issuers}
        rotated = {i.id for i in current.values() if i.id in self.issuers
                   and _signing_identity(i) != _signing_identity(self.issuers[i.id])}
        self.issuers = current
        if new or rotated:
            log.info("presign: %d new and %d changed issuer(s)", len(new), len(rotated))
            self.wanted |= new | rotated
            self.forced |= rotated


async def run_presigner(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    clock: Clock | None = None,
    sweep_interval: float = SWEEP_INTERVAL,
    issuer_poll_interval: float = ISSUER_POLL_INTERVAL,
) -> None:
    """Keep every response fresh until `stop` is set (see the module docstring).

    Database trouble is logged and retried with backoff; after reconnecting, a full sweep catches
    whatever notifications were missed. Needs two pool connections (LISTEN + work).
    """
    stop = stop or asyncio.Event()
    executor = make_executor(settings.presign_processes)
    backoff = 1.0
    try:
        while not stop.is_set():
            presigner = Presigner(pool, settings, executor, clock, wait_for_busy=False)
            loop = _Loop(presigner, stop, sweep_interval, issuer_poll_interval)
            try:
                async with pool.acquire() as listener:
                    await loop.run(listener)
                backoff = 1.0
            except _DB_ERRORS as exc:
                log.error("presign: database trouble (%s: %s); retrying in %.0f s",
                          type(exc).__name__, exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 30.0)
    finally:
        await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)


def presign_command(settings: Settings, args: argparse.Namespace) -> None:
    """`revoc presign [--once]`: open the database as the other commands do, run, exit 1 when an
    issuer failed (--once) or the run was interrupted before it finished."""
    # revoc.cli composes the packages; imported here because it imports this package's cli.
    from revoc.cli import database_url

    with database_url(settings) as dsn:
        code = asyncio.run(_presign_main(settings, dsn, once=args.once))
    if code:
        raise SystemExit(code)


async def _presign_main(settings: Settings, dsn: str, *, once: bool) -> int:
    from revoc.cli import open_pool  # checks the schema (or upgrades the embedded database)

    pool = await open_pool(settings, dsn)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        if not once:
            await run_presigner(pool, settings, stop=stop)
            return 0
        work = asyncio.ensure_future(presign_once(pool, settings))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            log.warning("presign: interrupted before the round finished")
            return 1
        return 0 if work.result().ok else 1
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await pool.close()

"""The continuous mode of `revoc presign`: supervised, queue-driven re-signing plus refresh sweeps.

Changes come from the durable queue `ocsp_pending` (responder/presign_queue.py): each loop turn
drains it, so a change is signed once by one presigner and a presigner that starts or reconnects
catches up from the queue, not by a full sweep. `cert_changed` notifications only wake the loop
(LISTEN); one that names a certificate with no response at all (just added) has it signed at once
(BR-6), and "<id>:*" (a bulk import) asks for a sweep of that issuer. Refreshes (BR-5) are the
sweep's (responder/presigner.py), run in the background when the earliest response falls due and
at least every `sweep_interval`, one per issuer across presigners (advisory lock). The issuer list
is polled every `issuer_poll_interval`: a new issuer is signed well inside BR-6's 15 minutes, a
changed signer re-signs the issuer's whole cache (OCSP-SIGNER-6). Quarantined changes are retried
every `quarantine_retry` seconds, or at once when their certificate changes again.

`run_presigner` is supervised: any exception in a turn and any lost connection (the LISTEN one
or a pooled one; PostgreSQL stopped, a backend terminated) is logged in one line, backed off
(doubling to `BACKOFF_CAP` seconds) and retried; it returns only when `stop` is set. Each turn
writes the heartbeat (revoc/workers.py, kind `presign`): `last_ok` after a good turn, the error
after a failed one (written as soon as PostgreSQL takes it), `ocsp_lag_seconds` per change
reflected, and `stopped_at` on an orderly exit. `presign_command` is the CLI entry (`--once` or
continuous).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from concurrent.futures import BrokenExecutor, Executor
from typing import Any

import asyncpg

from responder.presign_queue import QUARANTINE_RETRY, TURN_BUDGET, drain_queue, presign_once
from responder.presigner import (
    DB_ERRORS,
    Presigner,
    PresignReport,
    make_executor,
)
from revoc.admin import list_issuers
from revoc.clock import Clock
from revoc.model import Issuer
from revoc.notify import CERT_CHANGED, decode_serial_change
from revoc.runtime import close_pool, database_url, open_pool, run_until_stopped
from revoc.settings import Settings
from revoc.workers import Heartbeat

log = logging.getLogger("revoc.presign")

SWEEP_INTERVAL = 300.0  # seconds between refresh sweeps at the latest
SWEEP_RETRY = 30.0  # seconds before a sweep that failed is tried again
ISSUER_POLL_INTERVAL = 10.0  # seconds between looks at the issuer list (new issuers, rotations)
BACKOFF_FIRST = 0.5  # seconds before the first retry after a failure
BACKOFF_CAP = 5.0  # the longest wait between retries
REPEAT_LOG_INTERVAL = 60.0  # the same failure again within this is logged at debug level


class ListenerLost(Exception):
    """The LISTEN connection closed (PostgreSQL stopped, the backend was terminated)."""

    def __str__(self) -> str:
        return "the LISTEN connection was closed"


def _signing_identity(issuer: Issuer) -> tuple[bytes, bytes | None, str | None]:
    return issuer.cert_der, issuer.ocsp_cert_der, issuer.ocsp_key


class _Loop:
    """State of the continuous mode; it outlives sessions (a session: one LISTEN connection).

    Sweeps run as a background task, one at a time, so that the queue is drained while a long
    refresh round is still going. A sweep leaves certificates with queued changes to the queue,
    and the merge's change_seq guard keeps an older answer from replacing a newer one.
    """

    def __init__(self, presigner: Presigner, stop: asyncio.Event, heartbeat: Heartbeat, *,
                 sweep_interval: float, issuer_poll_interval: float,
                 quarantine_retry: float) -> None:
        self.presigner = presigner
        self.stop = stop
        self.heartbeat = heartbeat
        self.sweep_interval = sweep_interval
        self.issuer_poll_interval = issuer_poll_interval
        self.quarantine_retry = quarantine_retry
        self.issuers: dict[int, Issuer] = {}
        self.issuers_polled = False  # the first poll takes the list as it is (the start-up sweep)
        self.want_full = True  # the first refresh sweep after start
        self.wanted: set[int] = set()  # issuers to sweep ("<id>:*", new issuers)
        self.forced: set[int] = set()  # issuers to re-sign completely (new signer)
        self.named: dict[int, set[bytes]] = {}  # serials named by cert_changed since last turn
        self.sweeping: asyncio.Task[PresignReport] | None = None
        self.next_sweep = 0.0
        self.next_retry = 0.0  # quarantined changes: retried at start, then every interval
        self.wake = asyncio.Event()
        self.error: str | None = None  # the last failure, until the heartbeat row has it
        self.failed_issuers: tuple[str, ...] = ()  # of the last turn and the last sweep
        self.sweep_failed_issuers: tuple[str, ...] = ()  # of the last sweep
        self.healthy = False  # a turn succeeded since the last failure

    # ------------------------------------------------------------------ one session

    async def run(self, listener: asyncpg.Connection) -> None:
        """Drain, wait for a wake-up, repeat, until stop; raises on any trouble."""

        def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            change = decode_serial_change(payload)
            if change is None:
                log.warning("presign: ignoring cert_changed payload %r", payload)
            elif change.serial is None:
                self.wanted.add(change.issuer_id)
            else:
                self.named.setdefault(change.issuer_id, set()).add(change.serial)
            self.wake.set()

        lost = asyncio.Event()

        def on_lost(_conn: object) -> None:
            lost.set()
            self.wake.set()

        # Listening first, then draining: nothing queued in between can wait for a wake-up.
        await listener.add_listener(CERT_CHANGED, on_notify)
        listener.add_termination_listener(on_lost)
        try:
            await self.poll_issuers(listener)
            clock = time.monotonic
            next_poll = clock() + self.issuer_poll_interval
            while not self.stop.is_set():
                self.wake.clear()
                await self.turn()
                if self.wanted - self.issuers.keys():
                    # A notification named an issuer registered since the last poll: look now,
                    # or the sweep would drop it and it would wait for the next full sweep.
                    await self.poll_issuers(listener)
                    next_poll = clock() + self.issuer_poll_interval
                self.start_sweep()
                deadline = min(next_poll, self.next_retry)
                if self.sweeping is None:
                    deadline = min(deadline, self.next_sweep)
                await self.wait(deadline - clock())
                if lost.is_set():
                    raise ListenerLost
                if self.sweeping is not None and self.sweeping.done():
                    await self.sweep_ended()
                if clock() >= next_poll:
                    await self.poll_issuers(listener)
                    next_poll = clock() + self.issuer_poll_interval
                if self.sweeping is None and clock() >= self.next_sweep:
                    self.want_full = True
        finally:
            await self.cancel_sweep()
            if not lost.is_set():
                with contextlib.suppress(*DB_ERRORS):
                    listener.remove_termination_listener(on_lost)
                    await listener.remove_listener(CERT_CHANGED, on_notify)

    async def turn(self) -> None:
        """Drain the queue; sign certificates named by cert_changed that have no response."""
        started = time.perf_counter()
        retry = time.monotonic() >= self.next_retry
        report = await drain_queue(
            self.presigner, issuers=self.issuers, retry_quarantined=retry,
            observe_lag=lambda seconds: self.heartbeat.observe("ocsp_lag_seconds", seconds),
            budget=TURN_BUDGET)
        if not report.drained:
            self.wake.set()  # a large backlog: beat, then the next turn goes on at once
        elif retry:
            self.next_retry = time.monotonic() + self.quarantine_retry
        if report.changes:
            log.info("presign: re-signed %d queued change(s) in %.0f ms", report.changes,
                     (time.perf_counter() - started) * 1000)
        named, self.named = self.named, {}
        signed = 0
        try:
            for issuer_id, serials in named.items():
                issuer = self.issuers.get(issuer_id)
                if issuer is not None:
                    signed += await self.presigner.sign_unsigned(issuer, sorted(serials))
                else:
                    self.wanted.add(issuer_id)  # registered since the last poll: swept later
        except BaseException:
            for issuer_id, serials in named.items():  # tried again by the next session
                self.named.setdefault(issuer_id, set()).update(serials)
            raise
        if signed:
            log.info("presign: signed %d new certificate(s) after cert_changed", signed)
        self.failed_issuers = tuple(dict.fromkeys(report.failed_issuers
                                                  + self.sweep_failed_issuers))
        self.healthy = True
        await self.beat(ok=not self.failed_issuers)

    async def wait(self, seconds: float) -> None:
        """Until a wake-up (notification, lost connection), stop, the end of the running sweep,
        or `seconds`."""
        if self.wake.is_set() or self.stop.is_set() or seconds <= 0:
            return
        waker = asyncio.ensure_future(self.wake.wait())
        stopper = asyncio.ensure_future(self.stop.wait())
        waiting: set[asyncio.Future[Any]] = {waker, stopper}
        if self.sweeping is not None:
            waiting.add(self.sweeping)  # never cancelled here: it is not ours to cancel
        try:
            await asyncio.wait(waiting, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()
            stopper.cancel()

    # ------------------------------------------------------------------ sweeps

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

    async def _sweep(self, issuers: list[Issuer], force: set[int], full: bool) -> PresignReport:
        report = await self.presigner.sweep(issuers, force=force)
        if full:
            delay = await self.presigner.seconds_until_due(self.sweep_interval)
            self.next_sweep = time.monotonic() + delay
        return report

    async def sweep_ended(self) -> None:
        """Collect the finished sweep; a failed one is logged and tried again in SWEEP_RETRY."""
        assert self.sweeping is not None
        finished, self.sweeping = self.sweeping, None
        try:
            report = finished.result()
        except Exception as exc:  # any failure of a sweep: logged, retried, never fatal
            self.error = f"refresh sweep failed: {type(exc).__name__}: {exc}"
            log.error("presign: %s; next sweep in %.0f s", self.error, SWEEP_RETRY)
            self.next_sweep = time.monotonic() + SWEEP_RETRY
            await self.beat(ok=False)
            return
        self.sweep_failed_issuers = report.failed_issuers

    async def cancel_sweep(self) -> None:
        """Stop a running sweep (the session ends); it is started again by the next session."""
        if self.sweeping is None:
            return
        sweeping, self.sweeping = self.sweeping, None
        if not sweeping.done():
            sweeping.cancel()
            self.want_full = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sweeping

    async def poll_issuers(self, listener: asyncpg.Connection) -> None:
        """Sign new issuers now (BR-6) and re-sign all of an issuer whose signer changed.

        Runs on the LISTEN connection, which doubles as its liveness check."""
        current = {i.id: i for i in await list_issuers(listener)}
        if not self.issuers_polled:  # the first look: the start-up sweep covers every issuer
            self.issuers_polled = True
            self.issuers = current
            return
        new = {i.id for i in current.values() if i.id not in self.issuers}
        rotated = {i.id for i in current.values() if i.id in self.issuers
                   and _signing_identity(i) != _signing_identity(self.issuers[i.id])}
        self.issuers = current
        if new or rotated:
            log.info("presign: %d new and %d changed issuer(s)", len(new), len(rotated))
            self.wanted |= new | rotated
            self.forced |= rotated

    # ------------------------------------------------------------------ heartbeat

    async def beat(self, *, ok: bool) -> None:
        """Write the heartbeat: a failure not yet recorded first, then this turn's outcome."""
        hb = self.heartbeat
        hb.counters.update(self.presigner.counters)
        pool = self.presigner.pool
        if self.error is not None and await hb.beat(pool, error=self.error):
            self.error = None
        if ok:
            await hb.beat(pool, ok=True)
        elif self.failed_issuers:
            await hb.beat(pool, error="issuer(s) cannot be signed for: "
                          + ", ".join(self.failed_issuers))


async def run_presigner(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    clock: Clock | None = None,
    sweep_interval: float = SWEEP_INTERVAL,
    issuer_poll_interval: float = ISSUER_POLL_INTERVAL,
    quarantine_retry: float = QUARANTINE_RETRY,
    heartbeat: Heartbeat | None = None,
) -> None:
    """Keep every response fresh and reflect every change until `stop` is set (see the module
    docstring). Raises only at start, when the signing processes cannot be started. Needs three
    pool connections (LISTEN, queue, sweep) and a fourth while a sweep stores a page."""
    stop = stop or asyncio.Event()
    hb = heartbeat or Heartbeat("presign")
    executor: Executor = make_executor(settings.presign_processes)
    state = _Loop(Presigner(pool, settings, executor, clock, wait_for_busy=False), stop, hb,
                  sweep_interval=sweep_interval, issuer_poll_interval=issuer_poll_interval,
                  quarantine_retry=quarantine_retry)
    backoff = BACKOFF_FIRST
    last_logged: tuple[str, float] = ("", 0.0)
    try:
        while not stop.is_set():
            try:
                async with pool.acquire() as listener:
                    await state.run(listener)
            except Exception as exc:  # any failure of a turn: logged once, backed off, retried
                if state.healthy:
                    backoff, state.healthy = BACKOFF_FIRST, False
                text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                state.error = text
                now = time.monotonic()
                repeated = last_logged[0] == text and now - last_logged[1] < REPEAT_LOG_INTERVAL
                log.log(logging.DEBUG if repeated else logging.ERROR,
                        "presign: %s; retrying in %.1f s", text, backoff)
                if not repeated:
                    last_logged = (text, now)
                try:
                    if isinstance(exc, BrokenExecutor):  # a signing process died: a new pool
                        executor.shutdown(wait=False, cancel_futures=True)
                        executor = make_executor(settings.presign_processes)
                        counters = state.presigner.counters
                        state.presigner = Presigner(pool, settings, executor, clock,
                                                    wait_for_busy=False)
                        state.presigner.counters = counters
                    await state.beat(ok=False)
                except Exception as again:  # the next attempt deals with it
                    log.debug("presign: recovery step failed: %s", again)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)
    finally:
        await state.cancel_sweep()
        await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)
        await hb.stopped(pool)


def presign_command(settings: Settings, args: argparse.Namespace) -> None:
    """`revoc presign [--once]`: open the database as the other commands do, run, exit 1 when an
    issuer failed or a row was quarantined (--once), or the run was interrupted before it
    finished."""
    with database_url(settings) as dsn:
        code = asyncio.run(_presign_main(settings, dsn, once=args.once))
    if code:
        raise SystemExit(code)


async def _presign_main(settings: Settings, dsn: str, *, once: bool) -> int:
    # LISTEN, the queue, a sweep holding its issuer lock and a page being stored, plus headroom.
    pool = await open_pool(settings, dsn, max_size=6)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[int] = []  # the signal that stopped us decides the exit status (130/143)

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        if not once:
            # Stops within STOP_GRACE_SECONDS (x2) of the signal even with a round stuck in
            # PostgreSQL (a commit waiting for a lost synchronous standby).
            await run_until_stopped(run_presigner(pool, settings, stop=stop), stop)
            return 128 + received[0] if received else 0
        finished, report = await run_until_stopped(presign_once(pool, settings), stop, grace=0)
        if not finished or report is None:
            log.warning("presign: interrupted before the round finished")
            return 128 + received[0] if received else 1
        if report.quarantined:
            shown = ", ".join(report.quarantined[:5])
            more = f" and {len(report.quarantined) - 5} more" if len(report.quarantined) > 5 else ""
            log.error("presign: %d row(s) could not be signed and are quarantined (see `revoc "
                      "status`): %s%s", len(report.quarantined), shown, more)
        return 0 if report.ok else 1
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await close_pool(pool)

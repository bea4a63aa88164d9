"""The continuous mode of `revoc presign`: LISTEN, re-sign on notifications, sweep on a schedule.

`run_presigner` LISTENs on `cert_changed`: a notification for one serial re-signs that
certificate at once (responder/presigner.py `Presigner.resign_serials`, which sends NOTIFY
`ocsp_changed` in the same transaction as the new rows); "<id>:*" sweeps that issuer. Between
notifications it sleeps until the earliest response falls due, polls the issuer list (a new issuer
is signed within `issuer_poll_interval`, well inside BR-6's 15 minutes; a changed signer re-signs
the issuer's whole cache, OCSP-SIGNER-6) and sweeps everything every `sweep_interval` anyway, in
case a notification was lost. `presign_command` is the CLI entry (`--once` or continuous).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from responder.presigner import (
    DB_ERRORS,
    Presigner,
    PresignError,
    make_executor,
    presign_once,
)
from revoc.admin import list_issuers
from revoc.clock import Clock
from revoc.model import Issuer
from revoc.settings import Settings

log = logging.getLogger("revoc.presign")

SWEEP_INTERVAL = 300.0  # seconds between safety sweeps of the continuous mode
ISSUER_POLL_INTERVAL = 10.0  # seconds between looks at the issuer list (new issuers, rotations)


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
                with contextlib.suppress(asyncio.CancelledError, *DB_ERRORS):
                    await self.sweeping
            with contextlib.suppress(*DB_ERRORS):
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
            except DB_ERRORS as exc:
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
    received: list[int] = []  # the signal that stopped us decides the exit status (130/143)

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        if not once:
            await run_presigner(pool, settings, stop=stop)
            return 128 + received[0] if received else 0
        work = asyncio.ensure_future(presign_once(pool, settings))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            log.warning("presign: interrupted before the round finished")
            return 128 + received[0] if received else 1
        return 0 if work.result().ok else 1
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await pool.close()

"""When rounds run: `--once` (one round, then exit) or continuously on the schedule.

Both modes call `publish_round`; the scheduler only decides when (STYLE: build and schedule are
separate). Continuously, it sleeps until the earliest scope is due, and with
`crl_delta_on_change` a NOTIFY `cert_changed` (payload `<issuer id>:<serial>` or `<issuer id>:*`)
brings that issuer's next delta forward, after a debounce of about a second so a burst of
revocations becomes one delta rather than one per revocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from crl_publisher.publisher import RoundReport, publish_round
from revoc.clock import Clock, SystemClock
from revoc.settings import Settings

log = logging.getLogger("revoc.publish")

DEBOUNCE_SECONDS = 1.0
RETRY_SECONDS = 5.0
MAX_SLEEP_SECONDS = 60.0


async def run_once(pool: asyncpg.Pool, settings: Settings, *, force_full: bool = False,
                   clock: Clock | None = None) -> RoundReport:
    return await publish_round(pool, settings, clock=clock, force_full=force_full)


class ChangeListener:
    """Collects issuer ids from NOTIFY cert_changed and wakes the scheduler."""

    def __init__(self) -> None:
        self.changed: set[int] = set()
        self.wake = asyncio.Event()

    def __call__(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        issuer, _, _serial = payload.partition(":")
        try:
            self.changed.add(int(issuer))
        except ValueError:
            log.warning("ignoring cert_changed payload %r", payload)
            return
        self.wake.set()

    def take(self) -> set[int]:
        changed, self.changed = self.changed, set()
        self.wake.clear()
        return changed


async def run_forever(pool: asyncpg.Pool, settings: Settings, *, force_full: bool = False,
                      clock: Clock | None = None, stop: asyncio.Event | None = None) -> None:
    """Publish on the schedule until `stop` is set (or the task is cancelled)."""
    clock = clock or SystemClock()
    stop = stop or asyncio.Event()
    listener = ChangeListener()
    listen_conn: asyncpg.Connection | None = None
    pending: set[int] = set()
    first = True
    try:
        while not stop.is_set():
            if listen_conn is None or listen_conn.is_closed():
                listen_conn = await _listen(pool, listener)
            try:
                report = await publish_round(pool, settings, clock=clock,
                                             force_full=force_full and first,
                                             force_delta=pending)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("publishing round failed: %s; retrying in %.0f s", exc, RETRY_SECONDS)
                await _sleep_or_stop(stop, RETRY_SECONDS)
                with contextlib.suppress(Exception):
                    if listen_conn is not None:
                        await pool.release(listen_conn)
                listen_conn = None
                continue
            first = False
            pending = set()
            for name, reason in report.failures.items():
                log.error("issuer %s failed this round: %s", name, reason)
            wait = MAX_SLEEP_SECONDS
            if report.next_due is not None:
                wait = max(0.0, min(wait, (report.next_due - clock.now()).total_seconds()))
            woke = await _wait(listener.wake, stop, wait)
            if woke and settings.crl_delta_on_change and settings.crl_delta_interval > 0:
                await _sleep_or_stop(stop, DEBOUNCE_SECONDS)
                pending = listener.take()
                log.info("certificates changed for issuer(s) %s: publishing deltas now",
                         ", ".join(str(i) for i in sorted(pending)))
            else:
                listener.take()
    finally:
        if listen_conn is not None:
            with contextlib.suppress(Exception):
                await listen_conn.remove_listener("cert_changed", listener)
                await pool.release(listen_conn)


async def _listen(pool: asyncpg.Pool, listener: ChangeListener) -> asyncpg.Connection:
    conn: asyncpg.Connection = await pool.acquire()
    await conn.add_listener("cert_changed", listener)
    return conn


async def _wait(event: asyncio.Event, stop: asyncio.Event, seconds: float) -> bool:
    """Wait for `event`, `stop` or the timeout; True when `event` fired."""
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return event.is_set() and not stop.is_set()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)

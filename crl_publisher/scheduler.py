"""When rounds run: `--once` (one round, then exit) or continuously, supervised.

Both modes call `publish_round`; the scheduler only decides when (STYLE: build and schedule are
separate). `--once` publishes what is due and, for every scope with changes its latest CRLs do
not reflect, a new full CRL and delta at once (issue 13 point 2); with REVOC_PURGE_URL it then
gives the CDN purge (crl_publisher/purging.py) a few seconds to go out.

Continuously, it sleeps until the earliest scope is due (at most HEARTBEAT_SECONDS, so the
heartbeat stays fresh), and with `crl_delta_on_change` a NOTIFY `cert_changed` wakes it early,
after a debounce of about a second so a burst of revocations becomes one delta rather than one
per revocation. The notification only wakes it: which scopes get a delta is decided in the round
from the database (crl_publisher/scopes.py), so a lost notification delays, never loses, and two
publishers woken by one change publish it once. The full CRL of a changed scope follows within
`crl_full_on_change_delay` (the round's next_due wakes the loop for it). With REVOC_PURGE_URL
the same LISTEN connection also hears `ocsp_changed`, and the purge hook is told of each round's
publications and of each re-signed certificate.

After each round a light self-check (crl_publisher/selfcheck.py) verifies that the most recent
status changes are on the CRLs whose `max_change_seq` says they are; findings are logged once and
reported in the heartbeat.

Supervised (Boulder's rule: errors end a tick, never the process). Any exception in a round, a
lost LISTEN connection or a database that is down: one log line, a heartbeat with the error, a
capped backoff, and the next round, which catches up on everything missed by asking the database.
The loop ends only when `stop` is set (or the task is cancelled). Each turn writes the heartbeat
(`workers` row, kind 'publish'): ok after a successful round, the error otherwise, with the
commit-to-CRL lag of each change published and the age of the oldest change no CRL reflects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from crl_publisher.publisher import RoundReport, describe_failures, publish_round
from crl_publisher.selfcheck import CrlSelfCheck
from revoc.clock import Clock, SystemClock
from revoc.notify import CERT_CHANGED, OCSP_CHANGED
from revoc.settings import Settings
from revoc.workers import Heartbeat

log = logging.getLogger("revoc.publish")

DEBOUNCE_SECONDS = 1.0
HEARTBEAT_SECONDS = 30.0
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 5.0
# A failure that repeats is logged again at most this often (with the count), not every retry.
REPEAT_LOG_SECONDS = 60.0
ACQUIRE_TIMEOUT = 10.0


PURGE_CLOSE_SECONDS = 5.0  # what `--once` and a stopping loop give the CDN purges still queued


async def run_once(pool: asyncpg.Pool, settings: Settings, *, force_full: bool = False,
                   clock: Clock | None = None) -> RoundReport:
    # Every changed scope gets its full CRL now too (issue 13 point 2): no delay to coalesce.
    report = await publish_round(pool, settings, clock=clock, force_full=force_full,
                                 publish_changes=True, full_on_change_delay=0)
    if settings.purge_url and report.publications:
        from crl_publisher.purging import PublisherPurge

        purge = PublisherPurge(settings, pool)
        purge.published(report.publications)
        await purge.close(PURGE_CLOSE_SECONDS)
    return report


class Backoff:
    """Delays that double from `first` up to `cap`; reset after a success."""

    def __init__(self, first: float = BACKOFF_FIRST_SECONDS,
                 cap: float = BACKOFF_MAX_SECONDS) -> None:
        self.first = first
        self.cap = cap
        self.current = first

    def next(self) -> float:
        delay = self.current
        self.current = min(self.cap, self.current * 2)
        return delay

    def reset(self) -> None:
        self.current = self.first


class FailureLog:
    """One line per failure; the same failure again only every REPEAT_LOG_SECONDS."""

    def __init__(self) -> None:
        self.last_text: str | None = None
        self.last_logged = 0.0
        self.repeats = 0

    def failed(self, text: str, retry_in: float) -> None:
        now = time.monotonic()
        if text != self.last_text or now - self.last_logged >= REPEAT_LOG_SECONDS:
            again = f" ({self.repeats} more times since)" if self.repeats else ""
            log.error("publisher: %s%s; retrying in %.1f s", text, again, retry_in)
            self.last_text, self.last_logged, self.repeats = text, now, 0
        else:
            self.repeats += 1

    def recovered(self) -> None:
        if self.last_text is not None:
            log.warning("publishing works again after: %s", self.last_text)
        self.last_text, self.repeats = None, 0


class Notifications:
    """The LISTEN cert_changed connection: wakes the loop on a change and when it is lost.

    The connection comes from the pool. When it is lost, asyncpg hands it back to the pool by
    itself, so after a loss this class never touches it again (the old code called is_closed()
    on it and died with InterfaceError); the termination listener marks the loss and wakes the
    loop, whose next round catches up from the database.
    """

    def __init__(self, pool: asyncpg.Pool,
                 extra: dict[str, Callable[[Any, int, str, str], None]] | None = None) -> None:
        self.pool = pool
        self.extra = extra or {}  # more channels to listen to on the same connection
        self.conn: Any = None
        self.lost = False
        self.wake = asyncio.Event()
        self._generation = 0
        self._on_terminated: Callable[[Any], None] | None = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self.wake.set()

    def _termination_callback(self) -> Callable[[Any], None]:
        """A callback for this connection only: asyncpg calls it soon after the loss, maybe
        after a newer connection replaced this one, which must not be marked lost."""
        self._generation += 1
        generation = self._generation

        def on_terminated(_conn: Any) -> None:
            if generation == self._generation:
                self.lost = True
                self.wake.set()

        return on_terminated

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.lost

    async def ensure(self) -> None:
        """Listen, on a new connection when there is none or it was lost."""
        if self.connected:
            return
        await self.drop()
        conn = await self.pool.acquire(timeout=ACQUIRE_TIMEOUT)
        on_terminated = self._termination_callback()
        try:
            conn.add_termination_listener(on_terminated)
            await conn.add_listener(CERT_CHANGED, self._on_notify)
            for channel, callback in self.extra.items():
                await conn.add_listener(channel, callback)
        except BaseException:
            self._generation += 1  # whatever happens to that connection is no news
            with contextlib.suppress(Exception):
                await self.pool.release(conn, timeout=5)
            raise
        self.conn, self.lost, self._on_terminated = conn, False, on_terminated

    def take(self) -> None:
        self.wake.clear()

    async def drop(self) -> None:
        """Give the connection back (unless it was lost: asyncpg did that already)."""
        conn, lost, on_terminated = self.conn, self.lost, self._on_terminated
        self.conn, self.lost, self._on_terminated = None, False, None
        self._generation += 1  # a late termination callback of `conn` changes nothing now
        if conn is None or lost:
            return
        with contextlib.suppress(Exception):
            conn.remove_termination_listener(on_terminated)
        with contextlib.suppress(Exception):
            await conn.remove_listener(CERT_CHANGED, self._on_notify)
        for channel, callback in self.extra.items():
            with contextlib.suppress(Exception):
                await conn.remove_listener(channel, callback)
        with contextlib.suppress(Exception):
            await self.pool.release(conn, timeout=5)


def record_round(heartbeat: Heartbeat, report: RoundReport) -> None:
    """Counters, lag histogram and gauges of a finished round, for the heartbeat's stats."""
    heartbeat.count("rounds")
    heartbeat.count("crls_published", len(report.publications))
    if report.rows_skipped:
        heartbeat.count("rows_quarantined", report.rows_skipped)
    if report.rows_reencoded:
        heartbeat.count("entries_reencoded", report.rows_reencoded)
    for seconds, count in report.lags:
        for _ in range(count):
            heartbeat.observe("crl_lag_seconds", seconds)
    heartbeat.gauges["oldest_unreflected_crl_seconds"] = report.oldest_unreflected_seconds
    if report.publications:
        heartbeat.gauges["crls_over_size_limit"] = len(report.oversize)


async def run_forever(pool: asyncpg.Pool, settings: Settings, *, force_full: bool = False,
                      clock: Clock | None = None, stop: asyncio.Event | None = None,
                      heartbeat: Heartbeat | None = None) -> None:
    """Publish on the schedule until `stop` is set (or the task is cancelled); never raises
    for a failed round (see the module docstring)."""
    clock = clock or SystemClock()
    stop = stop or asyncio.Event()
    heartbeat = heartbeat or Heartbeat("publish")
    purge = None
    if settings.purge_url:
        from crl_publisher.purging import PublisherPurge

        purge = PublisherPurge(settings, pool, heartbeat)
    notifications = Notifications(
        pool, {OCSP_CHANGED: purge.on_ocsp_changed} if purge is not None else None)
    on_change = settings.crl_delta_on_change
    listen = on_change or purge is not None  # the purge hears of re-signed answers by NOTIFY
    backoff = Backoff()
    failures = FailureLog()
    pending_full = force_full
    selfcheck = CrlSelfCheck()
    unsent_error: str | None = None  # a failure the heartbeat could not write (database down)
    try:
        while not stop.is_set():
            listen_error: str | None = None
            if listen:
                try:
                    await notifications.ensure()
                except Exception as exc:  # rounds go on; the next turn listens again
                    listen_error = f"LISTEN {CERT_CHANGED}: {type(exc).__name__}: {exc}"
            try:
                notifications.take()  # this round asks the database for every change so far
                report = await publish_round(pool, settings, clock=clock,
                                             force_full=pending_full,
                                             publish_changes=on_change)
            except Exception as exc:  # supervised: any failure ends the round, not the loop
                text = f"{type(exc).__name__}: {exc}"
                delay = backoff.next()
                failures.failed(text, delay)
                heartbeat.count("rounds_failed")
                await notifications.drop()
                if not await heartbeat.beat(pool, ok=False, error=text):
                    unsent_error = text
                await _sleep_or_stop(stop, delay)
                continue
            pending_full = False
            record_round(heartbeat, report)
            if purge is not None and report.publications:
                purge.published(report.publications)
            wait = HEARTBEAT_SECONDS
            if report.next_due is not None:
                wait = max(0.0, min(wait, (report.next_due - clock.now()).total_seconds()))
            if listen_error is not None:
                wait = min(wait, backoff.next())
                failures.failed(listen_error, wait)
            else:
                backoff.reset()
                failures.recovered()
            findings = await _self_check(pool, selfcheck, heartbeat)
            error = listen_error or (None if report.ok
                                     else "; ".join(describe_failures(report))) or (
                f"CRL self-check: {len(findings)} finding(s), first: {findings[0]}"
                if findings else None)
            if await heartbeat.beat(pool, ok=report.ok, error=error or unsent_error):
                unsent_error = None
            if await _wait(notifications.wake, stop, wait) and not notifications.lost:
                await _sleep_or_stop(stop, DEBOUNCE_SECONDS)
    finally:
        await notifications.drop()
        if purge is not None:
            await purge.close(PURGE_CLOSE_SECONDS)
        await heartbeat.stopped(pool)


async def _self_check(pool: asyncpg.Pool, selfcheck: CrlSelfCheck,
                      heartbeat: Heartbeat) -> list[str]:
    """Run the light self-check (crl_publisher/selfcheck.py); a failure of the check itself is
    logged and is no finding."""
    try:
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            findings = await selfcheck.run(conn)
    except Exception as exc:
        log.warning("CRL self-check not run: %s: %s", type(exc).__name__, exc)
        return []
    heartbeat.gauges["crl_selfcheck_findings"] = len(findings)
    return findings


async def _wait(event: asyncio.Event, stop: asyncio.Event, seconds: float) -> bool:
    """Wait for `event`, `stop` or the timeout; True when `event` fired."""
    if event.is_set() or stop.is_set():
        return event.is_set() and not stop.is_set()
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

"""Bulk warm-up: a new responder fills its cache from PostgreSQL in the background.

Without it a new `revoc serve` (one more node behind the load balancer, a restart) answers every
first request for a certificate with a store read: about 5k misses a second against 100k+ warm
hits. So once the first LISTEN session is up (the issuers known, the catch-up position taken), the
lifespan starts `CacheWarmer.run`: one read-only transaction, a cursor over
`responder_warm_responses` (sql/queries/responder.sql: servable responses only, the longest-valid
first, at most the cache's entry cap), fetched `BATCH` rows a round trip in asyncpg's binary
format, the next batch read while this one is turned into cache entries. Serving goes on
meanwhile: entries are built `CHUNK` at a time between returns to the event loop, and misses still
go to the store. The fill stops when the cache is full (entries or bytes): it never evicts.

The one race (ARCHITECTURE invariant 1): the cursor's snapshot may predate a revocation whose
NOTIFY, or catch-up, runs before the fill reaches that certificate; it drops nothing then, and the
fill would put the old `good` where nothing drops it again. The fill is therefore opened with
`ResponseCache.open_fill` before the snapshot is taken, learns of every invalidation from then
on, and skips those certificates (responder/cache.py `BulkFill`; tests/test_cache_warm.py causes
exactly that race).

`REVOC_CACHE_WARM=false` turns it off. The result goes to the log ("cache warm: N responses in
S s (R/s)") and to /metrics (`revoc_cache_warm_*`); /readyz does not wait for it: a cold
responder answers correctly, only slower.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence

import asyncpg
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from responder.cache import BulkFill, CachedResponse, CacheKey, InvalidResponse, ResponseCache
from revoc.der.ocsp_certs import splice_certs
from revoc.queries import queries

log = logging.getLogger("revoc.responder")

BATCH = 5000  # rows a round trip
CHUNK = 500  # entries built between returns to the event loop (a few milliseconds)
MIN_VALIDITY_SECONDS = 60  # a response about to expire is left to the store and the presigner
FETCH_TIMEOUT = 60.0  # one batch; a database this slow ends the warm-up, not the responder


class WarmState(enum.Enum):
    OFF = "off"
    WAITING = "waiting"  # for the first connection to the database
    WARMING = "warming"
    DONE = "done"
    FAILED = "failed"


class CacheWarmer:
    """Fills `cache` once from the database; see the module docstring."""

    def __init__(self, cache: ResponseCache, max_entries: int, *, enabled: bool) -> None:
        self._cache = cache
        self._blocks: dict[int, bytes] = {}  # responder_certs id -> certs element
        self._max_entries = max_entries
        self.state = WarmState.WAITING if enabled else WarmState.OFF
        self.entries = 0  # put into the cache
        self.skipped = 0  # not put: the certificate changed while warming
        self.seconds = 0.0
        self.how_it_ended = ""
        # Tests: awaited between reading a batch and filling it (the race window, held open).
        self.before_fill: Callable[[Sequence[asyncpg.Record]], Awaitable[None]] | None = None

    @property
    def rate(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        if self.state is WarmState.WARMING:
            return f"cache warming: {self.entries} response(s) so far"
        if self.state in (WarmState.DONE, WarmState.FAILED):
            return f"cache warm-up {self.state.value}: {self.entries} response(s)"
        return f"cache warm-up {self.state.value}"

    async def run(self, pool: asyncpg.Pool) -> None:
        """Warm once (a no-op unless WAITING); logs the outcome, raises nothing but
        cancellation."""
        if self.state is not WarmState.WAITING:
            return
        self.state = WarmState.WARMING
        started = time.perf_counter()
        fill = self._cache.open_fill()  # before the snapshot: see the module docstring
        try:
            self.how_it_ended = await self._read(pool, fill)
            self.state = WarmState.DONE
        except asyncio.CancelledError:
            self.state = WarmState.FAILED
            raise
        except Exception as exc:
            self.state = WarmState.FAILED
            self.how_it_ended = f"stopped by {type(exc).__name__}: {exc}"
        finally:
            self._cache.close_fill(fill)
            self.entries = fill.added
            self.skipped = fill.skipped
            self.seconds = time.perf_counter() - started
        log.log(logging.INFO if self.state is WarmState.DONE else logging.WARNING,
                "cache warm: %d responses in %.2f s (%.0f/s); %s; %d skipped as changed "
                "meanwhile", self.entries, self.seconds, self.rate, self.how_it_ended,
                self.skipped)

    async def _read(self, pool: asyncpg.Pool, fill: BulkFill) -> str:
        async with pool.acquire(timeout=FETCH_TIMEOUT) as conn, conn.transaction(readonly=True):
            # Migration 0007: rows naming a certs element are stems; the elements come from the
            # same snapshot, so every id a row names is here (a missing one: the row is skipped).
            self._blocks = {row["id"]: bytes(row["certs_block"]) for row in await conn.fetch(
                queries()["responder_certs_all"], timeout=FETCH_TIMEOUT)}
            cursor = await conn.cursor(queries()["responder_warm_responses"],
                                       MIN_VALIDITY_SECONDS, self._max_entries,
                                       timeout=FETCH_TIMEOUT)
            pending = asyncio.ensure_future(cursor.fetch(BATCH, timeout=FETCH_TIMEOUT))
            try:
                while rows := await pending:
                    # The next batch travels while this one is built.
                    pending = asyncio.ensure_future(cursor.fetch(BATCH, timeout=FETCH_TIMEOUT))
                    if self.before_fill is not None:
                        await self.before_fill(rows)
                    ended = await self._fill(fill, rows)
                    if ended:
                        return ended
                return "all servable responses read"
            finally:
                if not pending.done():  # the connection is busy until it is
                    pending.cancel()
                await asyncio.wait([pending])  # its outcome is of no use any more
                if not pending.cancelled():
                    pending.exception()  # retrieved: no "never retrieved" warning

    async def _fill(self, fill: BulkFill, rows: Sequence[asyncpg.Record]) -> str:
        """Put a batch into the cache; a reason to stop, or "" to go on."""
        cache = self._cache
        for start in range(0, len(rows), CHUNK):
            for row in rows[start:start + CHUNK]:
                der = row[3]
                if row[6] is not None:
                    block = self._blocks.get(row[6])
                    if block is None:
                        continue  # never served without its certificates (the store logs it)
                    der = splice_certs(der, block)
                try:
                    entry = CachedResponse(der, row[4], row[5],
                                           key=CacheKey(row[0], row[1], row[2]))
                except InvalidResponse:
                    continue  # the store path says what is wrong with it, if anyone asks
                if not cache.fill(fill, entry):
                    return "the cache was cleared" if fill.cleared else "the cache is full"
            self.entries = fill.added
            await asyncio.sleep(0)  # let requests in
        return ""


class WarmCollector(Collector):
    """/metrics: how the warm-up went (per worker process, like the cache it fills)."""

    def __init__(self, warmer: CacheWarmer) -> None:
        self._warmer = warmer

    def collect(self) -> Iterator[Metric]:
        warmer = self._warmer
        state = GaugeMetricFamily("revoc_cache_warm_state",
                                  "1 for the state the cache warm-up is in", labels=["state"])
        for each in WarmState:
            state.add_metric([each.value], 1.0 if warmer.state is each else 0.0)
        yield state
        yield GaugeMetricFamily("revoc_cache_warm_responses",
                                "Responses the warm-up put into the cache", warmer.entries)
        yield GaugeMetricFamily("revoc_cache_warm_skipped",
                                "Responses the warm-up skipped: their certificate changed "
                                "while it read", warmer.skipped)
        yield GaugeMetricFamily("revoc_cache_warm_seconds",
                                "How long the finished warm-up took", warmer.seconds)
        yield GaugeMetricFamily("revoc_cache_warm_rate",
                                "Responses a second the finished warm-up put into the cache",
                                warmer.rate)

"""Keep CPython's cyclic garbage collector from stopping the responder for a scan of its cache.

A full collection visits every object the collector tracks. With a million cached responses that
took 1.15 s with list-based headers and still 0.53 s with header tuples kept per entry (measured;
no request is answered meanwhile; entries keep no headers now, responder/http_render.py renders
them), and CPython starts one whenever the objects that
survived since the previous full collection exceed a quarter of those that lived through it:
every minute or so while the cache churns, more often while it fills.

So the responder, every `FREEZE_SECONDS`, collects what was allocated since the previous round
(`gc.collect()` skips frozen objects, so this costs what a second's allocations cost) and freezes
the survivors (`gc.freeze()`): the collector never scans them again, and reference counting still
frees them when the cache evicts them. Cache entries hold no reference cycles, so they never need
the cyclic collector. An object frozen while alive that later dies as part of a cycle (a closed
database connection, say) would stay allocated, so every `FULL_SECONDS` everything is unfrozen and
collected once: one scan of the whole heap an hour instead of one a minute.

Since every round collects what the second allocated anyway, CPython's own young collections
are made rarer while the rounds run (a gen-0 threshold of `YOUNG_THRESHOLD` allocations instead
of 700): on cold misses, which allocate a cache entry, a memo slot and a few futures each, they
cost about a tenth of the CPU per miss (measured, bench/RESULTS.md "Cold misses in the lane").
Cyclic garbage waits at most for the next round; the thresholds are restored on cancellation.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("revoc.responder")

FREEZE_SECONDS = 1.0
FULL_SECONDS = 3600.0
YOUNG_THRESHOLD = 50_000


def freeze_round(full: bool = False) -> float:
    """Collect (everything when `full`, else what is not frozen) and freeze what survived;
    returns the seconds the collection took."""
    started = time.perf_counter()
    if full:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


async def keep_heap_frozen(freeze_seconds: float = FREEZE_SECONDS,
                           full_seconds: float = FULL_SECONDS) -> None:
    """Run freeze rounds until cancelled; on cancellation unfreeze and restore the thresholds
    (back to CPython's default)."""
    last_full = time.monotonic()
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], YOUNG_THRESHOLD), *thresholds[1:])
    try:
        while True:
            await asyncio.sleep(freeze_seconds)
            full = time.monotonic() - last_full >= full_seconds
            if full:
                last_full = time.monotonic()
            took = freeze_round(full)
            if full or took > 0.05:
                log.info("gc: %s collection took %.3f s; %d objects frozen",
                         "full" if full else "young", took, gc.get_freeze_count())
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
